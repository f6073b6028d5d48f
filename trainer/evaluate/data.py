"""Held-out Python text for evaluation: a folder of .py files, corpus shards, or single files."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".jsonl.gz", ".jsonl")


@dataclass
class DataStats:
    files: int = 0            # .py files and shards read
    documents: int = 0        # documents yielded
    skipped: int = 0          # unreadable / not UTF-8 / malformed records / empty
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, what: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(what)
            logger.warning("skipping %s", what)

    def as_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "skipped": self.skipped,
                "skipped_examples": self.skipped_examples}


def _is_shard(path: Path) -> bool:
    return path.name.endswith(SHARD_SUFFIXES)


def data_files(path: str | Path) -> list[Path]:
    """The .py files and shards under `path` (recursively, in name order), or `path` itself.

    A corpus folder (with `valid-*.jsonl.gz` shards) gives only its validation shards.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"no such file or folder: {p}")
    valid = sorted(f for f in p.glob("valid-*") if f.is_file() and _is_shard(f))
    if valid:  # a corpus folder (codeparrot corpus): its held-out split only, never train-*
        logger.info("%s is a corpus folder: evaluating its %d valid-* shards", p, len(valid))
        return valid
    files = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix == ".py" or _is_shard(f)))
    if not files:
        raise FileNotFoundError(f"no .py files or *.jsonl(.gz) shards under {p}")
    return files


def iter_documents(path: str | Path, stats: DataStats) -> Iterator[tuple[str, str]]:
    """(name, text) of every non-empty document; everything skipped is counted in `stats`."""
    for f in data_files(path):
        stats.files += 1
        if _is_shard(f):
            opener = gzip.open if f.name.endswith(".gz") else open
            try:
                with opener(f, "rt", encoding="utf-8") as fh:
                    for line_no, line in enumerate(fh, 1):
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError:
                            record = None
                        text = record.get("content") if isinstance(record, dict) else None
                        if not isinstance(text, str) or not text.strip():
                            stats.skip(f"{f}:{line_no} (no non-empty `content` string)")
                            continue
                        stats.documents += 1
                        name = record.get("path") or record.get("repo_path") or f"{f.name}:{line_no}"
                        yield str(name), text
            except (OSError, UnicodeDecodeError, EOFError) as e:
                stats.skip(f"{f} ({e})")
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            stats.skip(f"{f} ({e.__class__.__name__})")
            continue
        if not text.strip():
            stats.skip(f"{f} (empty)")
            continue
        stats.documents += 1
        yield str(f), text
