"""The data of a fine-tuning run: the user's files split into train and held-out, and a general set.

The split is by file and decided by a seeded draw on each file's content hash, so it
does not depend on the order the files were read in and the same sources and seed
always hold out the same files. The corpus stage has already dropped exact and near
duplicates (Jaccard >= its threshold), so no held-out file is a near copy of a file
trained on.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from trainer.corpus import CorpusArgs, CorpusBuilder, build_corpus
from trainer.corpus.filters import content_hash, uniform_draw
from trainer.corpus.sources import Item, default_source, resolve_source
from trainer.corpus.writer import SplitWriter

# The share of the standard library the corpus stage puts in its valid split by default:
# with the same rule (the draw on the content hash), the files no default model trained on.
GENERAL_VALID_FRACTION = 0.01


class DataError(ValueError):
    """The sources cannot give a fine-tuning run: reported in one line, exit status 2."""


def read_records(folder: Path, split: str) -> list[dict]:
    records = []
    for shard in sorted(folder.glob(f"{split}-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as fh:
            records.extend(json.loads(line) for line in fh if line.strip())
    return records


def _write_shard(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=4) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def split_held_out(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): the `fraction` of files with the lowest seeded draws, at least one,
    and at least one file left to train on. Both lists in path order."""
    if len(records) < 2:
        raise DataError("need at least 2 files: one to train on and one held out")
    ranked = sorted(records, key=lambda r: (uniform_draw(seed, "held-out", bytes.fromhex(r["hash"])), r["hash"]))
    n = min(len(ranked) - 1, max(1, round(fraction * len(ranked))))
    by_path = lambda r: (r.get("path") or "", r["hash"])  # noqa: E731
    return sorted(ranked[n:], key=by_path), sorted(ranked[:n], key=by_path)


def _why_nothing(stats: dict, specs: list[str]) -> str:
    where = ", ".join(specs)
    if stats["seen"] == 0:
        return f"no Python files in {where}"
    dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in stats["dropped"].items() if n)
    return f"{stats['seen']} file(s) in {where}, {stats['kept']} kept by the corpus filters ({dropped})"


def build_finetune_corpus(specs: list[str], output: Path, fraction: float, seed: int, replay: float = 0.0) -> dict:
    """Corpus stage over `specs` into `output` (train-* and held-out valid-* shards, stats.json,
    held_out.json). Written in a temporary folder renamed at the end: nothing half-written.

    `replay` is the share of the training bytes drawn from general code (`replay_records`),
    shuffled in among the user's files."""
    sources = [resolve_source(s) for s in specs]  # SourceError: a missing path, said before any work
    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stats = build_corpus(CorpusArgs(output=str(tmp), source=specs, valid_fraction=0.0, shuffle_buckets=0,
                                        seed=seed, progress=False), sources)
        records = read_records(tmp, "train")
        if len(records) < 2:
            raise DataError(f"{_why_nothing(stats, specs)}: at least 2 files must remain, one to train on and "
                            "one held out to measure the gain; nothing was trained or written")
        train, held = split_held_out(records, fraction, seed)
        for shard in tmp.glob("*-*.jsonl.gz"):
            shard.unlink()
        mixed = train
        if replay > 0:
            target = int(replay / (1 - replay) * sum(r["size"] for r in train))
            extra = replay_records(target, seed, tmp / "replay")
            mixed = train + extra
            random.Random(f"replay-{seed}").shuffle(mixed)
        _write_shard(tmp / "train-00000.jsonl.gz", mixed)
        _write_shard(tmp / "valid-00000.jsonl.gz", held)
        summary = {"sources": specs, "seed": seed, "fraction": fraction, "files_seen": stats["seen"],
                   "files_kept": len(records), "dropped": {k: v for k, v in stats["dropped"].items() if v},
                   "train": {"files": len(train), "bytes": sum(r["size"] for r in train)},
                   "held_out": {"files": len(held), "bytes": sum(r["size"] for r in held),
                                "paths": [r.get("path") for r in held]},
                   "replay": {"share": replay, "files": len(mixed) - len(train),
                              "bytes": sum(r["size"] for r in mixed) - sum(r["size"] for r in train)}}
        (tmp / "held_out.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        shutil.rmtree(output, ignore_errors=True)
        os.rename(tmp, output)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stdlib_items(valid: bool) -> Iterator[Item]:
    """The standard library's files in the corpus stage's valid split (or its train split, the
    files every default model trained on), drawn by the same rule on the content hash."""
    for item in resolve_source(default_source()).items(CorpusArgs(output="").max_bytes):
        if item.reason is not None:
            continue
        data = item.data if item.data is not None else item.content.encode("utf-8")
        if (uniform_draw(0, "split", content_hash(item.content, data)) < GENERAL_VALID_FRACTION) == valid:
            yield item


def _filtered(output: Path, split: str, items: Iterable[Item], stop: Callable[[CorpusBuilder], bool]) -> int:
    """`items` through the corpus filters into `output`'s `split` shards (arrival order) until
    `stop`; written in a temporary folder renamed at the end. Returns the files kept."""
    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = CorpusArgs(output=str(tmp), progress=False)
    builder, writer = CorpusBuilder(args), SplitWriter(tmp, float(split == "valid"), args.shard_records, shuffle_buckets=0)
    try:
        for item in items:
            builder.add(item, writer)
            if stop(builder):
                break
        writer.close()
        shutil.rmtree(output, ignore_errors=True)
        os.rename(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return builder.kept


def build_general_set(output: Path, limit: int) -> dict:
    """The standard library's valid split as the corpus stage draws it (the same filters), at
    most `limit` files: general Python that no default model trained on, to catch forgetting."""
    kept = _filtered(output, "valid", _stdlib_items(valid=True), lambda b: b.kept >= limit)
    return {"files": kept, "source": f"{default_source()} (valid split)"}


def _drawn_records(scratch: Path, seed: int, target_bytes: int, from_top: bool) -> list[dict]:
    """About `target_bytes` of the standard library's train split through the corpus filters,
    in the order of a seeded draw on each file's content hash (its top end if `from_top`)."""
    def rank(item: Item) -> float:
        data = item.data if item.data is not None else item.content.encode("utf-8")
        return uniform_draw(seed, "replay", content_hash(item.content, data))

    items = sorted(_stdlib_items(valid=False), key=rank, reverse=from_top)
    _filtered(scratch, "train", items, lambda b: b.bytes_out >= target_bytes)
    try:
        return read_records(scratch, "train")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def replay_records(target_bytes: int, seed: int, scratch: Path) -> list[dict]:
    """General code the starting model already learned, mixed into fine-tuning so it is not
    forgotten: the low end of the draw. Never a file of the general set, which measures
    the forgetting."""
    return _drawn_records(scratch, seed, target_bytes, from_top=False)


def selection_records(target_bytes: int, seed: int, scratch: Path) -> list[dict]:
    """General code to choose the merge share on (trainer/finetune/merge.py): the top end of
    the same draw, so never a replayed file, and never the general set."""
    return _drawn_records(scratch, seed, target_bytes, from_top=True)
