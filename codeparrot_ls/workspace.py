"""The workspace index: the Python files under the editor's workspace folders and what each
module defines (codeparrot_ls/definitions.py), built on a background thread.

* What is indexed: the `*.py` files under the roots that codeparrot_ls/workspace_files.py
  lists (breadth first, without ignored, hidden, excluded folders and virtual environments).
  Bounded by a number of files, a byte budget (the sum of the files' sizes) and a size per
  file: the walk stops at the first two, a file over the third is skipped.
* Kept per file: its module names, size and modification time, and its summary (definitions
  and import bindings). Not its text: windows for similarity ranking read the few files a
  request looks at (codeparrot_ls/repo_context.py), so memory stays at the summaries.
* Bad input is skipped and counted (`stats()["skipped"]`): unreadable files, binary or
  undecodable ones, files over the size limit, symlink loops, folders that vanish, files
  that do not parse (these stay indexed, without definitions).
* Updates (a saved file, a watched-file event, an edited open document) go through the same
  thread, in order. Readers take a lock only to look up a dict entry: no request waits for
  the index; a request uses what is indexed so far.
* The index yields to completions: before each file it waits for `gate` (the server's
  scheduler is idle), at most `MAX_YIELD_S`, so a build never takes a core or the GIL
  (`ast.parse` holds it) from a request, and still moves on under a stream of them.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from codeparrot_ls.definitions import ModuleSummary, summarize
from codeparrot_ls.workspace_files import python_files

log = logging.getLogger(__name__)

BUFFER_SETTLE_S = 0.5        # an edited open document is parsed once typing pauses this long
MAX_YIELD_S = 0.25           # the longest the index waits for completions before its next file


@dataclass
class IndexedFile:
    path: str
    modules: tuple[str, ...]     # dotted names it is imported by (package chain, folder path)
    size: int
    mtime_ns: int
    summary: ModuleSummary | None  # None: it does not parse
    is_package: bool


# ----------------------------------------------------------------------------- module names

def module_names(path: str, root: str | None, package_dirs: dict[str, bool] | None = None) -> tuple[tuple[str, ...], bool]:
    """Dotted names of the module at `path`: the package chain (folders with `__init__.py`)
    and, when different, the path from the workspace root (namespace packages)."""
    p = Path(path)
    is_package = p.name == "__init__.py"
    cache = package_dirs if package_dirs is not None else {}

    def has_init(d: Path) -> bool:
        key = str(d)
        if key not in cache:
            cache[key] = (d / "__init__.py").is_file()
        return cache[key]

    parts = [] if is_package else [p.stem]
    d = p.parent
    while has_init(d) and d.parent != d:
        parts.insert(0, d.name)
        d = d.parent
    names = [".".join(parts)] if parts else []
    if root is not None:
        try:
            rel = p.relative_to(root).with_suffix("").parts
        except ValueError:
            rel = ()
        rel = rel[:-1] if rel and rel[-1] == "__init__" else rel
        if rel and all(s.isidentifier() for s in rel):
            name = ".".join(rel)
            if name not in names:
                names.append(name)
    return tuple(n for n in names if n), is_package


# ----------------------------------------------------------------------------- the index

class WorkspaceIndex:
    def __init__(self, max_files: int = 10_000, max_bytes: int = 64_000_000, max_file_bytes: int = 1_000_000,
                 gate: threading.Event | None = None):
        self.max_files, self.max_bytes, self.max_file_bytes = max_files, max_bytes, max_file_bytes
        self._gate = gate                            # set while the index may work (None: always)
        self.roots: list[str] = []
        self._files: dict[str, IndexedFile] = {}
        self._modules: dict[str, str] = {}          # dotted name -> path
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._open: dict[str, str] = {}              # open documents: path -> latest text (the truth)
        self._dirty: dict[str, float] = {}           # open documents edited since parsed: path -> when
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.bytes = 0
        self.skipped: Counter[str] = Counter()
        self.truncated: str | None = None           # "maxFiles" | "maxBytes" when a build stopped early
        self.build_ms: float | None = None
        self.state = "empty"                         # empty | building | ready
        self.updates = 0
        self.version = 0                             # bumped by every change of what is indexed

    # -- what requests read ---------------------------------------------------------------
    def file(self, path: str) -> IndexedFile | None:
        with self._lock:
            return self._files.get(path)

    def module(self, name: str) -> IndexedFile | None:
        with self._lock:
            path = self._modules.get(name)
            return self._files.get(path) if path is not None else None

    def has_module(self, name: str) -> bool:
        with self._lock:
            return name in self._modules

    def root_of(self, path: str) -> str | None:
        for r in self.roots:
            if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
                return r
        return None

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def stats(self) -> dict:
        with self._lock:
            return {"state": self.state, "roots": list(self.roots), "files": len(self._files),
                    "modules": len(self._modules), "bytes": self.bytes, "buildMs": self.build_ms,
                    "truncated": self.truncated, "skipped": dict(self.skipped), "updates": self.updates,
                    "unparsable": sum(1 for f in self._files.values() if f.summary is None)}

    # -- what the server asks for ---------------------------------------------------------
    def start(self, roots: list[str]) -> None:
        """Index `roots` (absolute folder paths) in the background; replaces what was indexed."""
        self._ensure_thread()
        self._idle.clear()
        self._queue.put(("build", [os.path.abspath(r) for r in roots]))

    def refresh(self, path: str) -> None:
        """Re-read one file from disk (saved, created or changed on disk); gone: forgotten."""
        self._ensure_thread()
        self._idle.clear()
        self._queue.put(("file", os.path.abspath(path)))

    def set_buffer(self, path: str, text: str | None) -> None:
        """An open document's text (None: closed, back to its copy on disk). Parsed once
        edits pause, on the index's thread."""
        self._ensure_thread()
        self._idle.clear()
        path = os.path.abspath(path)
        if text is None:
            self._open.pop(path, None)
            self._dirty.pop(path, None)
            self._queue.put(("file", path))
        else:
            self._open[path] = text
            self._dirty[path] = time.monotonic()
            self._queue.put(("buffer", path))

    def wait(self, timeout: float | None = None) -> bool:
        """True once everything queued so far is done (tests, evaluation, benchmarks)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(("stop", None))

    # -- the index's thread ---------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="codeparrot-index", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                kind, arg = self._queue.get(timeout=BUFFER_SETTLE_S / 2 if self._dirty else None)
            except queue.Empty:
                kind, arg = "buffer", None
            try:
                if kind == "stop":
                    return
                self._yield()
                if kind == "build":
                    self._build(arg)
                elif kind == "file":
                    self._index_path(arg, from_build=False)
                elif kind == "buffer":
                    self._settle_buffers()
            except Exception:   # the index must never take the server down
                log.exception("workspace index: %s %s failed", kind, arg)
            if self._queue.empty() and not self._dirty:
                self._idle.set()

    def _yield(self) -> None:
        if self._gate is not None:
            self._gate.wait(MAX_YIELD_S)
            # A set event returns without letting go of the GIL; this does, so a request that
            # has just arrived gets it now, not at the next forced switch (5 ms).
            time.sleep(0)

    def _settle_buffers(self) -> None:
        now = time.monotonic()
        for path, when in list(self._dirty.items()):
            text = self._open.get(path)
            if text is None:
                self._dirty.pop(path, None)
            elif now - when >= BUFFER_SETTLE_S:
                if self._dirty.get(path) == when:
                    del self._dirty[path]
                self._index_text(path, text, size=len(text.encode("utf-8", "replace")), mtime_ns=0, counted=False)

    def _build(self, roots: list[str]) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self.roots, self.state = roots, "building"
            self._files, self._modules = {}, {}
            self.bytes, self.truncated, self.build_ms = 0, None, None
            self.skipped = Counter()
        package_dirs: dict[str, bool] = {}
        for path in python_files(roots, self.skipped):
            self._yield()
            self._index_path(path, from_build=True, package_dirs=package_dirs)
            if self.truncated is not None:
                break
        with self._lock:
            self.state = "ready"
            self.build_ms = (time.perf_counter() - t0) * 1e3
        for path in list(self._open):   # open documents: their buffers replace what the disk said
            self._dirty[path] = 0.0
        log.info("workspace index: %d files, %d bytes in %.0f ms; skipped %s%s", len(self._files), self.bytes,
                 self.build_ms, dict(self.skipped), f"; stopped at {self.truncated}" if self.truncated else "")

    def _index_path(self, path: str, from_build: bool, package_dirs: dict | None = None) -> None:
        if not from_build:
            self.updates += 1
            if path in self._open:   # an open document: its buffer is the truth
                return
            if not path.endswith(".py") or self.root_of(path) is None:
                return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._forget(path)
            return
        except OSError:
            self.skipped["unreadable"] += 1
            return
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_size > self.max_file_bytes:
            self.skipped["tooLarge"] += 1
            self._forget(path)
            return
        old = self.file(path)
        if from_build and len(self._files) >= self.max_files:
            self.truncated = "maxFiles"
            return
        if self.bytes - (old.size if old else 0) + st.st_size > self.max_bytes:
            if from_build:
                self.truncated = "maxBytes"
            self.skipped["overByteBudget"] += 1
            return
        if old is not None and old.mtime_ns == st.st_mtime_ns and old.size == st.st_size:
            return
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.max_file_bytes + 1)
        except OSError:
            self.skipped["unreadable"] += 1
            return
        if b"\0" in data:
            self.skipped["binary"] += 1
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped["undecodable"] += 1
            return
        self._index_text(path, text, len(data), st.st_mtime_ns, counted=True, package_dirs=package_dirs)

    def _index_text(self, path: str, text: str, size: int, mtime_ns: int, counted: bool,
                    package_dirs: dict | None = None) -> None:
        names, is_package = module_names(path, self.root_of(path), package_dirs)
        try:
            summary = summarize(text, names[0] if names else "", is_package)
        except Exception:   # SyntaxError, ValueError, RecursionError on pathological nesting
            summary = None
            if counted:
                self.skipped["syntaxError"] += 1
        entry = IndexedFile(path, names, size, mtime_ns, summary, is_package)
        with self._lock:
            old = self._files.get(path)
            if old is not None:
                self.bytes -= old.size
            elif not counted and (self.root_of(path) is None or not path.endswith(".py")):
                return   # an open document outside the workspace: nothing to keep
            self._files[path] = entry
            self.bytes += size
            self.version += 1
            for n in names:
                self._modules.setdefault(n, path)

    def _forget(self, path: str) -> None:
        with self._lock:
            old = self._files.pop(path, None)
            if old is None:
                return
            self.bytes -= old.size
            self.version += 1
            for n in old.modules:
                if self._modules.get(n) == path:
                    del self._modules[n]
