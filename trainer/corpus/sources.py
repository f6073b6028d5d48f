"""Where corpus files come from: local folders, jsonl(.gz) files and Hugging Face datasets.

Every source yields `Item`s, one per candidate file or record. An item either carries
the text (`content`) or the reason it could not be read (`reason`), so a bad file is
counted where it is met and never stops the run. Only one item's bytes are held at a
time: sources are generators all the way down.
"""

from __future__ import annotations

import errno
import glob
import itertools
import gzip
import json
import os
import stat
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Directory names skipped in the default (standard library) source. Test suites are
# mostly fixtures and deliberately odd code; site-packages is not the standard library.
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                              "__pycache__"})
HF_PREFIX = "hf:"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class Item:
    """One candidate file or record: either `content` or a `reason` it was skipped."""

    path: str
    content: str | None = None
    reason: str | None = None
    size: int = 0  # bytes as read from the source
    repo_name: str | None = None
    license: str | None = None
    quality: float = 0.0  # set for kept files
    data: bytes | None = None  # the UTF-8 bytes when read from disk (saves re-encoding)


class SourceError(ValueError):
    """A source that cannot be used at all (missing path, unloadable dataset)."""


def read_limited(path: str, limit: int) -> bytes:
    """Read at most `limit` + 1 bytes, so a file that grew past the bound is still caught."""
    with open(path, "rb") as f:
        return f.read(limit + 1)


def decode_file(path: str, data: bytes, max_bytes: int) -> Item:
    if len(data) > max_bytes:
        return Item(path, reason="too_large", size=len(data))
    if b"\0" in data:
        return Item(path, reason="binary", size=len(data))
    try:
        return Item(path, content=data.decode("utf-8"), size=len(data), data=data)
    except UnicodeDecodeError:
        return Item(path, reason="invalid_utf8", size=len(data))


def _stat_failure(path: str, rel: str, err: OSError) -> Item:
    if err.errno == errno.ELOOP:
        return Item(rel, reason="symlink_loop")
    if err.errno == errno.ENOENT and os.path.islink(path):
        return Item(rel, reason="broken_symlink")
    return Item(rel, reason="unreadable")


def walk_python_files(root: str, max_bytes: int, skip_dirs: frozenset[str] = frozenset()
                      ) -> Iterator[Item]:
    """Every `*.py` under `root` in sorted order, following symlinks.

    A directory symlink that points back at one of its own ancestors is a loop: it is
    reported once (reason `symlink_loop`) instead of being walked forever. The file size
    is checked with `stat` before anything is read.
    """
    for found in _walk_entries(root, skip_dirs):
        yield read_python_file(*found, max_bytes) if isinstance(found, tuple) else found


def _walk_entries(root: str, skip_dirs: frozenset[str]) -> Iterator[Item | tuple[str, str]]:
    """Candidates in walk order: (path, relative path) of a file to read, or an Item of a failure."""
    root_stat = os.stat(root)
    yield from _walk(root, root, skip_dirs, ancestors={(root_stat.st_dev, root_stat.st_ino)})


def _walk(root: str, folder: str, skip_dirs, ancestors: set) -> Iterator[Item | tuple[str, str]]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield Item(os.path.relpath(folder, root), reason="unreadable")
        return
    for entry in entries:
        rel = os.path.relpath(entry.path, root)
        try:
            is_dir = entry.is_dir()  # follows symlinks; False when the link is broken
        except OSError as err:  # a looping link may have been meant as a folder: count it too
            if entry.name.endswith(".py") or err.errno == errno.ELOOP:
                yield _stat_failure(entry.path, rel, err)
            continue
        if is_dir:
            if entry.name in skip_dirs:
                continue
            try:
                st = os.stat(entry.path)
            except OSError as err:
                yield _stat_failure(entry.path, rel, err)
                continue
            dir_id = (st.st_dev, st.st_ino)
            if dir_id in ancestors:
                yield Item(rel, reason="symlink_loop")
                continue
            ancestors.add(dir_id)
            yield from _walk(root, entry.path, skip_dirs, ancestors)
            ancestors.discard(dir_id)
        elif entry.name.endswith(".py"):
            yield entry.path, rel  # read by the caller, which may skip files of other tasks


def read_python_file(path: str, rel: str, max_bytes: int) -> Item:
    try:
        st = os.stat(path)
    except OSError as err:
        return _stat_failure(path, rel, err)
    if not stat.S_ISREG(st.st_mode):
        return Item(rel, reason="not_a_file")
    if st.st_size > max_bytes:  # never read a huge file just to throw it away
        return Item(rel, reason="too_large", size=st.st_size)
    try:
        data = read_limited(path, max_bytes)
    except OSError:
        return Item(rel, reason="unreadable")
    return decode_file(rel, data, max_bytes)


def record_item(row, where: str, max_bytes: int) -> Item:
    """A codeparrot-format record (`content`, optional `repo_name`, `path`, `license`)."""
    if not isinstance(row, dict) or not isinstance(row.get("content"), str):
        return Item(where, reason="missing_content")
    content = row["content"]
    path = row.get("path") if isinstance(row.get("path"), str) else where
    item = Item(path, repo_name=_str_or_none(row.get("repo_name")),
                license=_str_or_none(row.get("license")))
    try:
        item.size = len(content.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from a "\ud800" escape
        item.reason, item.size = "invalid_utf8", len(content)
        return item
    if item.size > max_bytes:
        item.reason = "too_large"
    elif "\0" in content:
        item.reason = "binary"
    else:
        item.content = content
    return item


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def iter_jsonl(path: str, max_bytes: int, owned=None) -> Iterator[Item]:
    """Records of one `.jsonl` or `.jsonl.gz` file, streamed line by line.

    `owned()`, called once per candidate, False: the candidate belongs to another task;
    it is skipped without being decoded."""
    opener = gzip.open if path.endswith(".gz") else open
    name = os.path.basename(path)
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip() or (owned is not None and not owned()):
                    continue
                where = f"{name}:{lineno}"
                try:
                    row = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    yield Item(where, reason="bad_json", size=len(line))
                    continue
                yield record_item(row, where, max_bytes)
    except (OSError, EOFError, gzip.BadGzipFile):
        # a truncated or unreadable file: what was read is kept, the rest is one count
        if owned is None or owned():
            yield Item(name, reason="unreadable")


def open_hf_dataset(name: str, config: str | None, split: str, data_files: str | None):
    """`datasets.load_dataset(..., streaming=True)`: resolves files, reads nothing yet."""
    from datasets import load_dataset
    kwargs = {"split": split, "streaming": True}
    if data_files:
        kwargs["data_files"] = data_files
    try:
        return load_dataset(name, config, **kwargs)
    except Exception as err:  # datasets raises many types for "not found / not reachable"
        raise SourceError(f"cannot load Hugging Face dataset {name!r}: {err}") from err


def default_source() -> str:
    """The running interpreter's standard library (no site-packages, no test suites)."""
    return sysconfig.get_paths()["stdlib"]


@dataclass
class Source:
    """A parsed `--source` value; `items()` streams it."""

    spec: str
    kind: str  # "folder" | "jsonl" | "hf"
    paths: list[str]
    skip_dirs: frozenset[str] = frozenset()
    hf_config: str | None = None
    hf_dataset: object = None  # the opened streaming dataset

    def items(self, max_bytes: int, rank: int = 0, world_size: int = 1) -> Iterator[Item]:
        """The items of this source; with `world_size` > 1 only task `rank`'s share of them.

        The shares are disjoint and cover every candidate: a folder's candidates are dealt
        out round-robin in walk order (every task lists the tree, each reads only its
        files); jsonl files are dealt out whole when there are at least as many as tasks,
        else their lines round-robin; a dataset is split with datasets' split_dataset_by_node.
        """
        mine = lambda i: i % world_size == rank  # noqa: E731
        if self.kind == "folder":
            for i, found in enumerate(_walk_entries(self.paths[0], self.skip_dirs)):
                if mine(i):
                    yield read_python_file(*found, max_bytes) if isinstance(found, tuple) else found
        elif self.kind == "jsonl":
            if len(self.paths) >= world_size:
                for path in self.paths[rank::world_size]:
                    yield from iter_jsonl(path, max_bytes)
            else:
                counter = itertools.count()
                for path in self.paths:
                    yield from iter_jsonl(path, max_bytes, lambda: mine(next(counter)))
        else:
            rows = self.hf_dataset
            if world_size > 1:
                from datasets.distributed import split_dataset_by_node
                rows = split_dataset_by_node(rows, rank=rank, world_size=world_size)
            for i, row in enumerate(rows):
                yield record_item(row, f"{self.paths[0]}:{rank}:{i}" if world_size > 1 else f"{self.paths[0]}:{i}",
                                  max_bytes)


def resolve_source(spec: str, hf_split: str = "train", hf_data_files: str | None = None) -> Source:
    """Check a `--source` value before any work; raises SourceError with a clear message."""
    if spec.startswith(HF_PREFIX):
        name, _, config = spec[len(HF_PREFIX):].partition(":")
        if not name:
            raise SourceError(f"empty dataset name in --source {spec!r}")
        source = Source(spec, "hf", [name], hf_config=config or None)
        source.hf_dataset = open_hf_dataset(name, source.hf_config, hf_split, hf_data_files)
        return source
    if os.path.isdir(spec):
        skip = STDLIB_SKIP_DIRS if Path(spec).resolve() == Path(default_source()).resolve() else frozenset()
        return Source(spec, "folder", [spec], skip_dirs=skip)
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True)
                       if p.endswith(JSONL_SUFFIXES) and os.path.isfile(p))
        if not paths:
            raise SourceError(f"--source {spec!r} matches no .jsonl or .jsonl.gz file")
        return Source(spec, "jsonl", paths)
    if os.path.isfile(spec) and spec.endswith(JSONL_SUFFIXES):
        return Source(spec, "jsonl", [spec])
    if os.path.exists(spec):
        raise SourceError(f"--source {spec!r} is neither a folder nor a .jsonl/.jsonl.gz file")
    raise SourceError(f"--source {spec!r} does not exist (a folder, a .jsonl[.gz] file or glob, "
                      f"or hf:NAME[:CONFIG] for a Hugging Face dataset)")
