"""Which files the workspace index reads: the `*.py` files under the workspace folders,
breadth first, skipping what `.gitignore` files ignore (git's rules, by `pathspec`), hidden
folders, `__pycache__`, `node_modules`, `site-packages` / `dist-packages` and virtual
environments (a folder with `pyvenv.cfg` or `conda-meta`). What is skipped is counted by reason (folders that vanish or
cannot be read, symlink loops, excluded or ignored paths).
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import pathspec

EXCLUDED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
VENV_MARKERS = ("pyvenv.cfg", "conda-meta")


def python_files(roots: list[str], skipped: Counter[str]) -> Iterator[str]:
    """The Python files under `roots`, in the order the index reads them (sorted names,
    breadth first); each folder is read only when the files before it have been taken."""
    seen_dirs: set[tuple[int, int]] = set()
    todo = deque((r, []) for r in roots)
    while todo:
        folder, rules = todo.popleft()
        entries = _entries(folder, seen_dirs, skipped)
        if entries is None:
            continue
        names = {e.name for e in entries}
        if any(m in names for m in VENV_MARKERS):
            skipped["excludedFolder"] += 1
            continue
        if ".gitignore" in names:
            try:
                text = Path(folder, ".gitignore").read_text(encoding="utf-8", errors="replace")
                rules = [*rules, *parse_gitignore(text, folder)]
            except OSError:
                pass
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                skipped["unreadable"] += 1
                continue
            if is_dir:
                if e.name.startswith(".") or e.name in EXCLUDED_DIRS:
                    skipped["excludedFolder"] += 1
                elif rules and is_ignored(rules, e.path, True):
                    skipped["ignored"] += 1
                else:
                    todo.append((e.path, rules))
            elif e.name.endswith(".py") and not e.name.startswith("."):
                if rules and is_ignored(rules, e.path, False):
                    skipped["ignored"] += 1
                else:
                    yield e.path
        time.sleep(0)   # let request threads have the GIL between folders


def _entries(folder: str, seen_dirs: set[tuple[int, int]], skipped: Counter[str]) -> list[os.DirEntry] | None:
    """The folder's entries by name; None (counted) when it is gone, unreadable or seen before."""
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            skipped["symlinkLoop"] += 1
            return None
        seen_dirs.add(key)
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        skipped["missingFolder"] += 1
    except OSError:
        skipped["unreadableFolder"] += 1
    return None


# ----------------------------------------------------------------------------- .gitignore

def parse_gitignore(text: str, base: str) -> list[tuple[pathspec.GitIgnoreSpec, str]]:
    """One .gitignore in folder `base`, as a rule list to append to its parent folders' rules."""
    return [(pathspec.GitIgnoreSpec.from_lines(text.splitlines()), base)]


def is_ignored(rules, path: str, is_dir: bool) -> bool:
    """Git's rules: within one .gitignore the last matching pattern decides; a deeper
    .gitignore decides before the ones above it (paths relative to each file's folder)."""
    for spec, base in reversed(rules):
        rel = os.path.relpath(path, base).replace(os.sep, "/")
        if rel.startswith("../"):
            continue
        decision = spec.check_file(rel + "/" if is_dir else rel).include
        if decision is not None:
            return decision
    return False
