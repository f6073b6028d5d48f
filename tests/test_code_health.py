"""The shape of the code: no import circle inside `codeparrot_ls`, the server never imports the
trainer, and files and functions stay short enough to read at once.

The graph is read from the source with `ast`, so nothing is imported to build it. Every import
statement counts, at module level or inside a function: an import deferred into a function
still ties the two modules together (it only hides the circle until that function runs).
An import names the deepest module it reaches (`from codeparrot_ls.engine import base` names
codeparrot_ls.engine.base; `from codeparrot_ls.engine import load_engine` names the package
codeparrot_ls.engine); importing a submodule also runs its parent packages, but they are
already running by then, so that is no edge.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = "codeparrot_ls"
ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root` by dotted name (a package by its own name)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` (the module in `path`) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's package, one level up per extra dot
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:   # `import a.b.c` where c is no module of ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def test_codeparrot_ls_has_no_import_cycle():
    graph = import_graph(ROOT, PACKAGE)
    assert f"{PACKAGE}.engine.decoding" in graph and f"{PACKAGE}.engine.base" in graph[f"{PACKAGE}.engine.decoding"]
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """A circle made by a function-level, a relative or a `from package import module` import is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import thing\n")
    (pkg / "a.py").write_text("def later():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\nfrom .c import x\nthing = 1\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\nx = 1\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.b"}, "pkg.a": {"pkg.sub.b"},
                     "pkg.sub.b": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.a"}}
    assert sorted(first_cycle(graph)[1:]) == ["pkg.a", "pkg.sub.b", "pkg.sub.c"]
    (pkg / "sub" / "c.py").write_text("x = 1\n")
    assert first_cycle(import_graph(tmp_path, "pkg")) is None


# Limits with a little slack over the style's "~400 lines a file, ~80 lines a function".
MAX_FILE_LINES = 420
MAX_FUNCTION_LINES = 85


def python_files(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def test_the_server_never_imports_the_trainer():
    """codeparrot_ls installs without torch and the trainer: no import of it, at any level."""
    offenders = []
    for path in python_files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "trainer"]
    assert not offenders, offenders


def long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [f"{path.relative_to(root)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_files_and_functions_stay_short():
    files = python_files(PACKAGE, "trainer")
    assert len(files) > 40
    long_files = [f"{p.relative_to(ROOT)} ({n} lines)" for p in files
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not long_files, long_files
    too_long = [entry for p in files for entry in long_functions(p, MAX_FUNCTION_LINES)]
    assert not too_long, too_long


def test_a_long_function_is_found(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(90))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    assert long_functions(tmp_path / "m.py", MAX_FUNCTION_LINES, tmp_path) == ["m.py:6 long (91 lines)"]
