"""Repository-level line completion (the CrossCodeEval / RepoBench setting): does the
workspace context help where code uses what another module of the same repository defines?

`--data REPO` is one repository folder. It is indexed as the language server indexes a
workspace (codeparrot_ls/workspace.py, the same bounds and skipping rules), and two groups of
seeded positions are drawn from its files:

* cross-file: lines (not imports) that use a name that the file imports from another module
  of the repository and that resolves there to a definition (codeparrot_ls/repo_context.py);
* first use: those of them where that name is used for the first time in the file (it
  appears in no line above, imports aside): only the other module can tell what it is, the
  positions CrossCodeEval keeps;
* ordinary: any line, as `--task line-completion` draws them (a check that the workspace
  context costs nothing where it has nothing to offer).

Each position is completed twice in the same run, with `workspaceContext` on and off, by the
server's own `Completer` (context builder, token healing, decoding, post-processing: the
suggestion an editor would show), with the document cut at the cursor (`--cursor indent`:
the whole line is predicted; `random`: the rest of the line from a random point). The
current file's copy on disk is never its own context (the server's rule for an open
document). Scores are those of line completion: exact match of whitespace-split tokens and
edit similarity (rapidfuzz `fuzz.ratio`, 0-100) against the rest of the line.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import replace
from pathlib import Path

from codeparrot_ls.cache import SuggestionCache
from codeparrot_ls.completion import Completer
from codeparrot_ls.definitions import import_statements
from codeparrot_ls.repo_context import RepoContext, path_to_uri
from codeparrot_ls.settings import CompletionSettings
from codeparrot_ls.workspace import WorkspaceIndex
from trainer.evaluate.line_completion import candidate_lines, edit_similarity, exact_match

GROUPS = ("cross_file", "first_use", "ordinary")
# indent / random as in line completion; api (CrossCodeEval's placement): a cross-file position's
# cursor right before the name it uses from another module (`x = mod.|name(...)`), ordinary
# positions' after the indentation.
CURSORS = ("indent", "random", "api")


def _repo_files(index: WorkspaceIndex) -> list[tuple[str, str]]:
    out = []
    for path in sorted(index.paths()):
        try:
            out.append((path, Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return out


def sample_positions(files, repo: RepoContext, count: int, seed: int, cursor: str) -> dict[str, list[dict]]:
    """Seeded positions of every group: {group: [{path, line, column, document, target}]}."""
    if cursor not in CURSORS:
        raise ValueError(f"unknown cursor placement {cursor!r}; expected one of {CURSORS}")
    cross, first, ordinary = [], [], []
    for f, (path, text) in enumerate(files):
        lines = text.split("\n")
        uses = repo.cross_module_lines(path_to_uri(path), text)
        seen = _used_before(text, lines, uses)
        for i in sorted(uses):
            if i > 0 and len(lines[i].strip()) >= 4:
                cross.append((f, i, uses[i][0][1]))
                if not seen[i]:
                    first.append(cross[-1])
        ordinary.extend((f, i, None) for i in candidate_lines(text))
    rng = random.Random(seed)     # cross-file, then ordinary: the draws the seed gave before first use
    out = {group: _draw(files, candidates, count, cursor, rng)
           for group, candidates in (("cross_file", cross), ("ordinary", ordinary))}
    out["first_use"] = _draw(files, first, count, cursor, random.Random(f"{seed}-first-use"))
    return {g: out[g] for g in GROUPS}


def _draw(files, candidates: list, count: int, cursor: str, rng: random.Random) -> list[dict]:
    picks = sorted(rng.sample(range(len(candidates)), min(count, len(candidates))))
    return [_position(files, *candidates[p], cursor, rng) for p in picks]


def _used_before(text: str, lines: list[str], uses: dict[int, list[tuple[str, int]]]) -> dict[int, bool]:
    """For each line of `uses`: whether its cross-module name already appears in a line above
    or before its column, import statements aside."""
    in_import = set()
    for line, stmt in import_statements(text):
        in_import.update(range(line, line + stmt.count("\n") + 1))
    out = {}
    for i, ((name, col), *_) in uses.items():
        word = re.compile(r"(?<![\w])" + re.escape(name) + r"(?!\w)")
        above = any(word.search(lines[k]) for k in range(i) if k not in in_import)
        out[i] = above or bool(word.search(lines[i][:col]))
    return out


def _position(files, f: int, i: int, api_col: int | None, cursor: str, rng: random.Random) -> dict:
    path, text = files[f]
    lines = text.split("\n")
    line = lines[i].rstrip()
    indent = len(line) - len(line.lstrip())
    if cursor == "api" and api_col is not None:
        col = api_col
    elif cursor == "random":
        col = indent + rng.randrange(len(line) - indent)
    else:
        col = indent
    document = "\n".join([*lines[:i], line[:col], *lines[i + 1:]])
    return {"path": path, "line": i, "offset": sum(len(x) + 1 for x in lines[:i]) + col,
            "document": document, "target": line[col:]}


def _run(completer: Completer, repo: RepoContext, positions: list[dict], settings: CompletionSettings) -> tuple[dict, list]:
    em = es = 0.0
    definitions = prompt_tokens = 0
    samples = []
    t0 = time.monotonic()
    for pos in positions:
        uri = path_to_uri(pos["path"])
        completer.cache = SuggestionCache()     # every position on its own: nothing typed along
        completer.builder.forget(uri)
        # No KV reuse from the previous position: the int8 model's numbers depend on how the
        # prompt is split into passes, so a reused prefix changed one suggestion in three
        # between two arms with the same prompt. Cold, a position's answer is its prompt's.
        completer.decoder.reset()
        out = completer.complete(uri, pos["document"], pos["offset"], settings, invoked=False, repo=repo)
        prediction = out[0].insert_text if out else ""
        hit, sim = exact_match(prediction, pos["target"]), edit_similarity(prediction, pos["target"])
        em += hit
        es += sim
        definitions += completer.stats.last_definitions
        prompt_tokens += completer.stats.last_prompt_tokens
        samples.append({"path": pos["path"], "line": pos["line"] + 1, "target": pos["target"],
                        "prediction": prediction, "exact_match": hit, "edit_similarity": sim,
                        "definitions": completer.stats.last_definitions})
    n = len(positions)
    seconds = time.monotonic() - t0
    return {"positions": n, "exact_match": 100.0 * em / n if n else float("nan"),
            "edit_similarity": es / n if n else float("nan"),
            "mean_definitions": definitions / n if n else 0.0,
            "mean_prompt_tokens": prompt_tokens / n if n else 0.0,
            "ms_per_position": 1e3 * seconds / n if n else 0.0}, samples


def evaluate_repo_completion(engine, data: str, positions: int = 200, seed: int = 0, cursor: str = "indent",
                             max_new_tokens: int = 48, settings: CompletionSettings | None = None) -> dict:
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data must be a repository folder: {root}")
    base = settings or CompletionSettings()
    base = replace(base, single_line=True, max_new_tokens=max_new_tokens, time_budget_ms=600_000)
    index = WorkspaceIndex(base.workspace_max_files, base.workspace_max_bytes, base.workspace_max_file_bytes)
    index.start([str(root.resolve())])
    index.wait()
    index.close()
    repo = RepoContext(index)
    files = _repo_files(index)
    picked = sample_positions(files, repo, positions, seed, cursor)
    if not picked["cross_file"]:
        raise ValueError(f"no line of {root} uses a name defined in another of its modules")
    completer = Completer(engine)
    results, samples = {}, {}
    for group in GROUPS:
        for on in (True, False):
            name = f"{group}_{'with' if on else 'without'}_workspace"
            results[name], samples[name] = _run(completer, repo, picked[group], replace(base, workspace_context=on))
    for group in GROUPS:
        w, wo = results[f"{group}_with_workspace"], results[f"{group}_without_workspace"]
        results[f"{group}_gain"] = {"positions": w["positions"],
                                    "exact_match": w["exact_match"] - wo["exact_match"],
                                    "edit_similarity": w["edit_similarity"] - wo["edit_similarity"]}
    return {"results": results, "index": index.stats(), "samples": samples,
            "settings": {"positions": positions, "seed": seed, "cursor": cursor, "max_new_tokens": max_new_tokens,
                         "workspace_share": base.workspace_share, "context_tokens": base.context_tokens}}
