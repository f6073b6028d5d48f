"""jsonl.gz shard writing for the corpus stage.

A shard is written under a `.tmp` name and renamed only once it is complete, so a
killed run never leaves a truncated file that looks like a finished shard.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

SHARD_PATTERNS = ("train-*.jsonl.gz", "valid-*.jsonl.gz", "*.jsonl.gz.tmp", "*.bucket.tmp",
                  "stats.json", "stats.json.tmp")


def existing_outputs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for pattern in SHARD_PATTERNS for p in folder.glob(pattern))


def clear_outputs(folder: Path) -> None:
    """Remove a previous run's shards and stats (only files this stage writes)."""
    for path in existing_outputs(folder):
        path.unlink()


class ShardWriter:
    """Writes `{prefix}-00000.jsonl.gz`, `{prefix}-00001.jsonl.gz`, ... of `shard_records` each.

    Compression runs on one background thread (zlib releases the GIL), fed ~1 MiB chunks
    in order; at most `MAX_PENDING` chunks wait, so memory stays bounded. gzip level 4: on
    the stdlib it compressed 2.2x faster than the default 6 for 6 % more bytes.
    """

    CHUNK_BYTES = 1 << 20
    MAX_PENDING = 4

    def __init__(self, folder: Path, prefix: str, shard_records: int, compresslevel: int = 4):
        self.folder, self.prefix = folder, prefix
        self.shard_records, self.compresslevel = shard_records, compresslevel
        self.records = 0
        self.shards: list[str] = []
        self._file = self._gz = None
        self._in_shard = 0
        self._chunk: list[bytes] = []
        self._chunk_bytes = 0
        self._pending: deque[Future] = deque()
        self._compressor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gzip-{prefix}")

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.jsonl.gz"
        self._final = self.folder / name
        self._tmp = self.folder / (name + ".tmp")
        self._file = open(self._tmp, "wb")
        # mtime=0 and no file name in the header: identical input gives identical bytes
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._file,
                                 compresslevel=self.compresslevel, mtime=0)
        self._in_shard = 0

    def write(self, record: dict) -> None:
        if self._gz is None:
            self._open()
        line = json.dumps(record).encode("ascii") + b"\n"
        self._chunk.append(line)
        self._chunk_bytes += len(line)
        self._in_shard += 1
        self.records += 1
        if self._chunk_bytes >= self.CHUNK_BYTES:
            self._flush()
        if self._in_shard >= self.shard_records:
            self._finish()

    def _flush(self) -> None:
        if self._chunk:
            self._pending.append(self._compressor.submit(self._gz.write, b"".join(self._chunk)))
            self._chunk, self._chunk_bytes = [], 0
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    def _finish(self) -> None:
        self._flush()
        while self._pending:
            self._pending.popleft().result()
        self._gz.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        self.shards.append(self._final.name)
        self._gz = self._file = None

    def close(self) -> None:
        if self._gz is not None:
            self._finish()
        self._compressor.shutdown()


class ShuffledShardWriter:
    """A ShardWriter whose records come out in a random order, in bounded memory.

    Sources are walked one after another (all of the stdlib, then the next folder...),
    so shards written in arrival order would feed training one package at a time. This
    is a two-pass external shuffle: each record goes to one of `buckets` temporary files
    at random; on close each bucket (about 1/`buckets` of the split) is read, shuffled and
    written to the shards. Memory: one bucket. Seeded, so the same input gives the same
    shards.
    """

    def __init__(self, folder: Path, prefix: str, shard_records: int, buckets: int = 64, seed: int = 0):
        self.shards = ShardWriter(folder, prefix, shard_records)
        self.folder, self.prefix, self.n_buckets = folder, prefix, max(1, buckets)
        self.rng = random.Random(f"shuffle-{seed}-{prefix}")
        self._buckets: list = [None] * self.n_buckets
        self.records = 0

    def _bucket_path(self, i: int) -> Path:
        return self.folder / f".{self.prefix}-{i:04d}.bucket.tmp"

    def write(self, record: dict) -> None:
        i = self.rng.randrange(self.n_buckets)
        if self._buckets[i] is None:
            self._buckets[i] = open(self._bucket_path(i), "wb")
        self._buckets[i].write(json.dumps(record).encode("ascii") + b"\n")
        self.records += 1

    def close(self) -> None:
        for i, f in enumerate(self._buckets):
            if f is None:
                continue
            f.close()
            path = self._bucket_path(i)
            lines = path.read_bytes().splitlines()
            self.rng.shuffle(lines)
            for line in lines:
                self.shards.write(json.loads(line))
            path.unlink()
        self._buckets = [None] * self.n_buckets
        self.shards.close()

    @property
    def shard_names(self) -> list[str]:
        return self.shards.shards


class SplitWriter:
    """Routes records to train/valid by a hash-derived draw in [0, 1).

    A record goes to valid when its draw is below `valid_fraction`. Small corpora could
    end with an empty valid split, so the train record with the smallest draw is held
    back (one record in memory) and moved to valid at the end if valid is still empty
    and at least two records were kept. The choice depends only on the set of kept
    files, not on their order.
    """

    def __init__(self, folder: Path, valid_fraction: float, shard_records: int, shuffle_buckets: int = 64,
                 seed: int = 0):
        self.valid_fraction = valid_fraction
        if shuffle_buckets > 0:
            self.train = ShuffledShardWriter(folder, "train", shard_records, shuffle_buckets, seed)
            self.valid = ShuffledShardWriter(folder, "valid", shard_records, shuffle_buckets, seed)
        else:  # arrival order
            self.train = ShardWriter(folder, "train", shard_records)
            self.valid = ShardWriter(folder, "valid", shard_records)
        self._held: tuple[float, dict] | None = None

    def write(self, record: dict, draw: float) -> None:
        if draw < self.valid_fraction:
            self.valid.write(record)
            return
        if self.valid_fraction > 0 and (self._held is None or draw < self._held[0]):
            previous, self._held = self._held, (draw, record)
            if previous is None:
                return
            record = previous[1]
        self.train.write(record)

    def close(self) -> None:
        if self._held is not None:
            to_valid = self.valid.records == 0 and self.train.records > 0
            (self.valid if to_valid else self.train).write(self._held[1])
            self._held = None
        self.train.close()
        self.valid.close()

    def summary(self) -> dict:
        return {name: {"records": w.records, "shards": list(getattr(w, "shard_names", w.shards))}
                for name, w in (("train", self.train), ("valid", self.valid))}
