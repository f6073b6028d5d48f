"""The workspace index (codeparrot_ls/workspace.py), module summaries (definitions.py) and
what a request gathers from them (repo_context.py), on small workspaces made here and on
real standard-library source."""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from codeparrot_ls import prompt as P
from codeparrot_ls.context import ContextBuilder
from codeparrot_ls.definitions import Binding, import_bindings, import_statements, resolve_relative, summarize
from codeparrot_ls.repo_context import RepoContext
from codeparrot_ls.settings import CompletionSettings
from codeparrot_ls.workspace import WorkspaceIndex, module_names
from codeparrot_ls.workspace_files import is_ignored, parse_gitignore, python_files

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def built(roots, **bounds) -> WorkspaceIndex:
    index = WorkspaceIndex(**bounds)
    index.start([str(r) for r in roots])
    assert index.wait(60)
    return index


# ----------------------------------------------------------------------------- definitions

def test_summary_keeps_signatures_class_members_and_constants():
    src = ('import os\nfrom .base import Base as B\nLIMIT = 10\nBIG = ' + repr("x" * 200) + '\n'
           '@decorate\nasync def fetch(url: str, *, retries=3) -> bytes:\n    """Doc."""\n    return b""\n'
           'class Client(B):\n    """A client."""\n    timeout: float = 5.0\n'
           '    def __init__(self, host, port=80):\n        self.host = host\n'
           '    @property\n    def address(self):\n        return self.host\n')
    s = summarize(src, "pkg.client")
    d = s.definitions
    assert d["LIMIT"].text == "LIMIT = 10" and d["BIG"].text == "BIG = ..."
    assert d["fetch"].text == "@decorate\nasync def fetch(url: str, *, retries=3) -> bytes: ..."
    assert d["Client"].text == ("class Client(B):\n    timeout: float = 5.0\n    def __init__(self, host, port=80): ...\n"
                                "    @property\n    def address(self): ...")
    assert s.bindings == {"os": Binding("os"), "B": Binding("pkg.base", "Base")}
    with pytest.raises(SyntaxError):
        summarize("def broken(:\n", "m")
    # Headers as written; one with a comment is written by ast.unparse instead.
    d = summarize("def f(a,\n      b=(1, 2)): return 1\ndef g(x):  # note\n    return x\nclass C: pass\n", "m").definitions
    assert d["f"].text == "def f(a,\n      b=(1, 2)): ..."
    assert d["g"].text == "def g(x): ..." and d["C"].text == "class C:\n    ..."


def test_real_module_summary_and_relative_imports():
    s = summarize((STDLIB / "json" / "decoder.py").read_text(encoding="utf-8"), "json.decoder")
    assert s.definitions["JSONDecoder"].text.startswith("class JSONDecoder(object):\n    def __init__(self, *, object_hook=None")
    assert s.bindings["scanner"] == Binding("json", "scanner")          # from json import scanner
    assert resolve_relative("mod", 2, "a.b.c") == "a.b.mod"
    assert resolve_relative(None, 1, "a") == "a" and resolve_relative("x", 3, "a") is None


def test_imports_of_a_document_that_does_not_parse():
    text = ("import os.path\nfrom . import (\n    sibling,\n    other as o,\n)\n"
            "def f(:\n    from .deep.mod import thing\n    import x as\n")
    assert [line for line, _ in import_statements(text)] == [0, 1, 6, 7]
    bindings, lines = import_bindings(text, "pkg")
    assert bindings == {"os": Binding("os"), "sibling": Binding("pkg", "sibling"), "o": Binding("pkg", "other"),
                        "thing": Binding("pkg.deep.mod", "thing")}
    assert lines["thing"] == 6


# ----------------------------------------------------------------------------- the index

def test_gitignore_rules():
    rules = parse_gitignore("# c\nbuild/\n*.gen.py\n/top.py\n!keep.gen.py\ndocs/**/out.py\n", "/r")
    assert is_ignored(rules, "/r/build", True) and not is_ignored(rules, "/r/build", False)
    assert is_ignored(rules, "/r/a/b/x.gen.py", False) and not is_ignored(rules, "/r/a/keep.gen.py", False)
    assert is_ignored(rules, "/r/top.py", False) and not is_ignored(rules, "/r/sub/top.py", False)
    assert is_ignored(rules, "/r/docs/a/b/out.py", False) and is_ignored(rules, "/r/docs/out.py", False)


def test_module_names_follow_packages_and_the_root(tmp_path):
    write(tmp_path, {"src/pkg/__init__.py": "", "src/pkg/sub/__init__.py": "", "src/pkg/sub/m.py": "",
                     "ns/plain.py": ""})
    assert module_names(str(tmp_path / "src/pkg/sub/m.py"), str(tmp_path)) == (("pkg.sub.m", "src.pkg.sub.m"), False)
    assert module_names(str(tmp_path / "src/pkg/__init__.py"), str(tmp_path))[0][0] == "pkg"
    assert module_names(str(tmp_path / "ns/plain.py"), str(tmp_path))[0] == ("plain", "ns.plain")


def test_bounds_bad_files_and_updates(tmp_path):
    write(tmp_path, {f"pkg/m{i}.py": f"def f{i}(a):\n    return a\n" for i in range(6)})
    write(tmp_path, {"pkg/__init__.py": "", "site-packages/dep.py": "x = 1\n", "node_modules/n.py": "",
                     "pkg/__pycache__/c.py": "", "bad.py": "def f(:\n"})
    (tmp_path / "bin.py").write_bytes(b"\0\1\2")
    index = built([tmp_path, tmp_path / "missing"])
    st = index.stats()
    assert st["files"] == 8 and st["unparsable"] == 1
    assert st["skipped"] == {"excludedFolder": 3, "binary": 1, "syntaxError": 1, "missingFolder": 1}
    assert index.module("pkg.m3").summary.definitions["f3"].text == "def f3(a): ..."

    few = built([tmp_path], max_files=3)
    assert few.stats()["files"] == 3 and few.stats()["truncated"] == "maxFiles"
    small = built([tmp_path], max_bytes=60)
    assert small.stats()["bytes"] <= 60 and small.stats()["truncated"] == "maxBytes"

    # A change on disk, a new file, a deleted file.
    (tmp_path / "pkg/m0.py").write_text("def renamed(b):\n    return b\n")
    (tmp_path / "pkg/new.py").write_text("NEW = 1\n")
    (tmp_path / "pkg/m1.py").unlink()
    for name in ("m0", "new", "m1"):
        index.refresh(str(tmp_path / f"pkg/{name}.py"))
    assert index.wait(30)
    assert "renamed" in index.module("pkg.m0").summary.definitions
    assert index.module("pkg.new") is not None and index.module("pkg.m1") is None
    assert index.stats()["files"] == 8 and index.stats()["bytes"] == sum(
        p.stat().st_size for p in tmp_path.rglob("*.py") if p.parent.name == "pkg" or p.name == "bad.py")


def test_an_open_buffer_replaces_the_file_on_disk(tmp_path):
    write(tmp_path, {"lib.py": "def on_disk(): ...\n"})
    index = built([tmp_path])
    index.set_buffer(str(tmp_path / "lib.py"), "def in_buffer(x): ...\n")
    assert index.wait(30)
    assert set(index.module("lib").summary.definitions) == {"in_buffer"}
    index.refresh(str(tmp_path / "lib.py"))      # a watcher event while open: the buffer stays the truth
    assert index.wait(30) and set(index.module("lib").summary.definitions) == {"in_buffer"}
    index.set_buffer(str(tmp_path / "lib.py"), None)   # closed without saving: back to the disk
    assert index.wait(30) and set(index.module("lib").summary.definitions) == {"on_disk"}


# ----------------------------------------------------------------------------- a request

PROJECT = {
    "app/__init__.py": "from .models import User as User\n",
    "app/models.py": "class User:\n    def __init__(self, name, email=None): ...\n    def greet(self, loud=False): ...\n",
    "app/util/__init__.py": "",
    "app/util/text.py": "def slugify(value, sep='-'):\n    return value\n\nMAX_SLUG = 40\n",
    "app/views.py": ("from app import User\nfrom .util import text\nimport app.util.text as T\n\n\n"
                     "def show(name):\n    user = User(name)\n    slug = text.slugify(name)\n    n = T.MAX_SLUG\n"
                     "    return \n"),
}


def test_uses_near_the_cursor_resolve_through_reexports_and_submodules(tmp_path):
    write(tmp_path, PROJECT)
    repo = RepoContext(built([tmp_path]))
    views = tmp_path / "app/views.py"
    text = PROJECT["app/views.py"].replace("return \n", "return User(\n")
    found = repo.gather(views.as_uri(), text, 9, "    return User(")
    # The name on the cursor's line first, then those of the lines above, nearest first.
    assert [(f.definition.name, f.distance, f.label) for f in found.definitions] == [
        ("User", 0, f"{tmp_path.name}/app/models.py"), ("MAX_SLUG", 1, f"{tmp_path.name}/app/util/text.py"),
        ("slugify", 2, f"{tmp_path.name}/app/util/text.py")]
    assert [u.split(tmp_path.name)[1] for u, _ in found.documents] == [
        "/app/models.py", "/app/util/text.py", "/app/__init__.py"]   # then modules imported, by distance
    # Typing on after the name gives the very same answer.
    assert repo.gather(views.as_uri(), text.replace("User(\n", "User(na\n"), 9, "    return User(na") is found
    # The document's copy on disk is never its own context.
    assert all(f.path != str(views) for f in found.definitions)


@pytest.mark.parametrize("head", ["    return ", "    return len(", "    return Us", "    # User("])
def test_no_workspace_context_unless_the_cursor_line_uses_a_workspace_name(tmp_path, tok, head):
    write(tmp_path, PROJECT)
    repo = RepoContext(built([tmp_path]))
    text = PROJECT["app/views.py"].replace("    return \n", head)
    uri = (tmp_path / "app/views.py").as_uri()
    found = repo.gather(uri, text, 9, head)
    assert found.definitions == [] and found.documents == []
    builder = ContextBuilder(tok, P.special_token_ids(tok.get_vocab()), n_positions=1024, supports_fim=True)
    on = builder.build(text, len(text), 9, CompletionSettings(workspace_context=True), uri=uri, repo=repo)
    off = builder.build(text, len(text), 9, CompletionSettings(workspace_context=False), uri=uri, repo=repo)
    assert on.prompt_ids() == off.prompt_ids()   # exactly the prompt without workspace context


def test_definitions_lead_the_prompt_within_the_budget(tmp_path, tok):
    write(tmp_path, PROJECT)
    repo = RepoContext(built([tmp_path]))
    builder = ContextBuilder(tok, P.special_token_ids(tok.get_vocab()), n_positions=1024, supports_fim=True)
    text = PROJECT["app/views.py"].replace("    return \n", "    return User(")
    uri = (tmp_path / "app/views.py").as_uri()
    ctx = builder.build(text, len(text), 9, CompletionSettings(workspace_context=True), uri=uri, repo=repo)
    head = tok.decode(ctx.head_ids, skip_special_tokens=False)
    assert head.endswith("class User:\n    def __init__(self, name, email=None): ...\n"
                         "    def greet(self, loud=False): ...\n<|endoftext|>")
    assert "def slugify(value, sep='-'): ...\nMAX_SLUG = 40\n" in head
    off = builder.build(text, len(text), 9, CompletionSettings(workspace_context=False), uri=uri, repo=repo)
    assert off.head_ids == [builder.eos_id] and off.definitions == []   # a prompt starts like a document
    for share in (0.05, 0.1, 0.3):
        settings = CompletionSettings(workspace_context=True, workspace_share=share)
        ctx = builder.build(text, len(text), 9, settings, uri=uri, repo=repo)
        fixed = 1 + P.FIM_PROMPT_TOKENS     # <|endoftext|> first, the FIM sentinels
        assert len(ctx.head_ids) - 1 <= int((1024 - settings.max_new_tokens - fixed) * share)
        assert len(ctx.prompt_ids()) <= 1024 - settings.max_new_tokens


def test_the_workspace_block_takes_only_what_the_document_leaves(tmp_path, tok):
    write(tmp_path / "w", PROJECT)
    repo = RepoContext(built([tmp_path / "w"]))
    builder = ContextBuilder(tok, P.special_token_ids(tok.get_vocab()), n_positions=512, supports_fim=True)
    imports, body = PROJECT["app/views.py"].split("def show(name):\n")
    above = "".join(f"STEP_{i} = '{'ab ' * 30}'\n" for i in range(150))   # more than a prompt holds
    below = "".join(f"    step_{i} = {i}\n" for i in range(60))
    text = imports + above + "def show(name):\n" + body.replace("    return \n", "    return User(\n" + below)
    offset = text.index("User(\n") + len("User(")
    line, uri = text.count("\n", 0, offset), (tmp_path / "w/app/views.py").as_uri()
    for share in (0.3, 0.75):
        settings = CompletionSettings(workspace_context=True, workspace_share=share)
        on = builder.build(text, offset, line, settings, uri=uri, repo=repo)
        builder.forget(uri)
        off = builder.build(text, offset, line, CompletionSettings(workspace_context=False), uri=uri, repo=repo)
        builder.forget(uri)
        # Definitions in the room the document's lines leave: not one of those lines displaced.
        assert on.definitions and on.prefix_ids == off.prefix_ids and on.suffix_ids == off.suffix_ids
        assert len(on.prompt_ids()) <= 512 - settings.max_new_tokens


def test_members_of_workspace_classes_and_of_constants_annotated_with_them(tmp_path):
    project = dict(PROJECT)
    project["app/state.py"] = ("import typing as t\nif t.TYPE_CHECKING:\n    from .models import User\n\n"
                               "current_user: User = None\n")
    project["app/views.py"] = "from app import User\nfrom .state import current_user\n\n\ndef show():\n    "
    write(tmp_path, project)
    repo = RepoContext(built([tmp_path]))
    uri, label = (tmp_path / "app/views.py").as_uri(), f"{tmp_path.name}/app/models.py"
    text = project["app/views.py"]
    call = repo.gather(uri, text + "current_user.greet(", 5, "    current_user.greet(").definitions
    # The method's signature under its class's header, then the annotated constant.
    assert [(f.definition.text, f.label) for f in call[:2]] == [
        ("class User:\n    def greet(self, loud=False): ...", label),
        ("current_user: User = None", f"{tmp_path.name}/app/state.py")]
    after_dot = repo.gather(uri, text + "User.", 5, "    User.").definitions
    assert after_dot[0].definition.text == ("class User:\n    def greet(self, loud=False): ...\n"
                                            "    def __init__(self, name, email=None): ...")


def test_symlink_loops_and_unreadable_folders_are_counted(tmp_path):
    write(tmp_path, {"a/x.py": "X = 1\n"})
    os.symlink(tmp_path / "a", tmp_path / "a" / "again")
    os.symlink(tmp_path / "nowhere", tmp_path / "a" / "dangling.py")
    st = built([tmp_path]).stats()
    assert st["files"] == 1 and st["skipped"]["symlinkLoop"] == 1


# ----------------------------------------------------------------------------- the evaluation

def test_repo_completion_evaluation_runs_both_groups_with_and_without_context(tmp_path, tiny_onnx_dir):
    import json

    from trainer.evaluate import main

    views = PROJECT["app/views.py"].replace("    return \n", "    again = User(slug)\n    return \n")
    write(tmp_path / "repo", {**PROJECT, "app/views.py": views})
    out = tmp_path / "rc.json"
    rc = main(["--model", str(tiny_onnx_dir), "--task", "repo-completion", "--data", str(tmp_path / "repo"),
               "--positions", "5", "--max_new_tokens", "4", "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    res = report["results"]
    # views.py uses User, text.slugify and T.MAX_SLUG on four lines: all of them are drawn; the
    # first use of each (User's import aside) is in the first-use group, User's second is not.
    cross = report["samples"]["cross_file_with_workspace"]
    first = ["n = T.MAX_SLUG", "slug = text.slugify(name)", "user = User(name)"]
    assert sorted(s["target"] for s in cross) == sorted([*first, "again = User(slug)"])
    assert sorted(s["target"] for s in report["samples"]["first_use_without_workspace"]) == first
    assert res["first_use_gain"]["positions"] == 3
    # The cursor after the indentation: no name on its line yet, so no workspace context.
    assert res["cross_file_with_workspace"]["mean_definitions"] == 0
    assert res["ordinary_with_workspace"]["positions"] == 5
    assert res["cross_file_gain"]["edit_similarity"] == pytest.approx(
        res["cross_file_with_workspace"]["edit_similarity"] - res["cross_file_without_workspace"]["edit_similarity"])
    assert report["index"]["files"] == 5
    # CrossCodeEval's cursor: right before the name used from another module.
    assert main(["--model", str(tiny_onnx_dir), "--task", "repo-completion", "--data", str(tmp_path / "repo"),
                 "--positions", "5", "--max_new_tokens", "4", "--cursor", "api", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    api = report["samples"]["cross_file_without_workspace"]
    assert sorted(s["target"] for s in api) == ["MAX_SLUG", "User(name)", "User(slug)", "slugify(name)"]
    # `text.` and `T.` before the cursor: their modules' names reach the prompt.
    assert [s["definitions"] > 0 for s in report["samples"]["cross_file_with_workspace"]].count(True) == 2
    assert report["results"]["cross_file_without_workspace"]["mean_definitions"] == 0
    assert main(["--model", str(tiny_onnx_dir), "--task", "repo-completion", "--data", str(tmp_path / "nothing")]) == 2


def test_after_a_module_and_a_dot_its_names_come_first(tmp_path):
    write(tmp_path, PROJECT)
    repo = RepoContext(built([tmp_path]))
    text = PROJECT["app/views.py"].replace("    return \n", "    return text.sl\n")
    found = repo.gather((tmp_path / "app/views.py").as_uri(), text, 9, "    return text.sl")
    # A catalogue of the module's names, one line each, those the document uses from it first.
    assert [(f.definition.text, f.distance) for f in found.definitions[:2]] == [
        ("def slugify(value, sep='-'): ...", -1), ("MAX_SLUG = 40", -1)]
    # Typing on after the same receiver changes nothing.
    assert repo.gather((tmp_path / "app/views.py").as_uri(), text.replace("text.sl\n", "text.slu\n"), 9,
                       "    return text.slu") is found


def test_the_index_yields_to_completions(tmp_path, monkeypatch):
    """While the server's scheduler runs a completion (its idle gate is clear) the index does
    not work; once it is idle the build runs to the end; under a stream of completions it still
    moves on, a file per wait."""
    import threading

    from codeparrot_ls import workspace

    write(tmp_path, {f"pkg/m{i}.py": f"def f{i}(x):\n    return x\n" for i in range(12)})
    gate = threading.Event()               # clear: a completion is running
    monkeypatch.setattr(workspace, "MAX_YIELD_S", 30.0)
    index = WorkspaceIndex(gate=gate)
    index.start([str(tmp_path)])
    assert not index.wait(0.5)
    assert len(index) == 0 and index.stats()["state"] == "empty"
    gate.set()
    assert index.wait(30) and len(index) == 12
    index.close()

    gate.clear()
    monkeypatch.setattr(workspace, "MAX_YIELD_S", 0.01)
    busy = WorkspaceIndex(gate=gate)
    busy.start([str(tmp_path)])
    assert busy.wait(30) and len(busy) == 12
    busy.close()


def test_the_scheduler_is_idle_only_without_queued_or_running_jobs():
    import asyncio

    from codeparrot_ls.scheduler import Scheduler

    scheduler = Scheduler()
    seen = []

    def job(is_cancelled):
        seen.append(scheduler.idle.is_set())
        return "done"

    async def main():
        assert scheduler.idle.is_set()
        results = await asyncio.gather(scheduler.run("a", job), scheduler.run("b", job))
        assert [r for _, r in results] == ["done", "done"]
        assert scheduler.idle.is_set()

    asyncio.run(main())
    assert seen == [False, False]
    scheduler.shutdown()


def test_nested_gitignore_files_follow_git(tmp_path):
    """A deeper .gitignore decides before the ones above it; `**`, character classes and
    directory-only patterns as git reads them. The expectations come from `git check-ignore`."""
    import shutil
    import subprocess

    write(tmp_path, {
        ".gitignore": "*.gen.py\ngenerated/\n**/tmp_*.py\nx[0-9].py\n",
        "pkg/.gitignore": "!keep.gen.py\nlocal.py\n",
        "pkg/keep.gen.py": "", "pkg/other.gen.py": "", "pkg/local.py": "", "local.py": "",
        "pkg/a/tmp_1.py": "", "x1.py": "", "xa.py": "", "generated/m.py": "", "pkg/generated.py": "",
    })
    rules = parse_gitignore((tmp_path / ".gitignore").read_text(), str(tmp_path))
    inner = rules + parse_gitignore((tmp_path / "pkg/.gitignore").read_text(), str(tmp_path / "pkg"))
    expected = {"pkg/keep.gen.py": False, "pkg/other.gen.py": True, "pkg/local.py": True, "local.py": False,
                "pkg/a/tmp_1.py": True, "x1.py": True, "xa.py": False, "generated/m.py": True,
                "pkg/generated.py": False}
    got = {rel: is_ignored(inner if rel.startswith("pkg/") else rules, str(tmp_path / rel), False)
           for rel in expected}
    got["generated/m.py"] = is_ignored(rules, str(tmp_path / "generated"), True)
    assert got == expected
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        out = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", *expected], capture_output=True, text=True)
        assert set(out.stdout.split()) == {rel for rel, ignored in expected.items() if ignored}
    files = {os.path.relpath(p, tmp_path) for p in python_files([str(tmp_path)], Counter())}
    assert files == {rel for rel, ignored in expected.items() if not ignored}
