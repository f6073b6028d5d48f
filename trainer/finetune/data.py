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
import shutil
from pathlib import Path

from trainer.corpus import CorpusArgs, build_corpus
from trainer.corpus.filters import uniform_draw
from trainer.corpus.sources import default_source, resolve_source

# The share of the standard library the corpus stage puts in its valid split by default:
# with the same rule (the draw on the content hash), the files no default model trained on.
GENERAL_VALID_FRACTION = 0.01


class DataError(ValueError):
    """The sources cannot give a fine-tuning run: reported in one line, exit status 2."""


def _read_records(folder: Path, split: str) -> list[dict]:
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


def build_finetune_corpus(specs: list[str], output: Path, fraction: float, seed: int) -> dict:
    """Corpus stage over `specs` into `output` (train-* and held-out valid-* shards, stats.json,
    held_out.json). Written in a temporary folder renamed at the end: nothing half-written."""
    sources = [resolve_source(s) for s in specs]  # SourceError: a missing path, said before any work
    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stats = build_corpus(CorpusArgs(output=str(tmp), source=specs, valid_fraction=0.0, shuffle_buckets=0,
                                        seed=seed, progress=False), sources)
        records = _read_records(tmp, "train")
        if len(records) < 2:
            raise DataError(f"{_why_nothing(stats, specs)}: at least 2 files must remain, one to train on and "
                            "one held out to measure the gain; nothing was trained or written")
        train, held = split_held_out(records, fraction, seed)
        for shard in tmp.glob("*-*.jsonl.gz"):
            shard.unlink()
        _write_shard(tmp / "train-00000.jsonl.gz", train)
        _write_shard(tmp / "valid-00000.jsonl.gz", held)
        summary = {"sources": specs, "seed": seed, "fraction": fraction, "files_seen": stats["seen"],
                   "files_kept": len(records), "dropped": {k: v for k, v in stats["dropped"].items() if v},
                   "train": {"files": len(train), "bytes": sum(r["size"] for r in train)},
                   "held_out": {"files": len(held), "bytes": sum(r["size"] for r in held),
                                "paths": [r.get("path") for r in held]}}
        (tmp / "held_out.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        shutil.rmtree(output, ignore_errors=True)
        os.rename(tmp, output)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_general_set(output: Path, limit: int) -> dict:
    """The standard library's valid split as the corpus stage draws it (the same filters), at
    most `limit` files: general Python that no default model trained on, to catch forgetting."""
    from trainer.corpus import CorpusBuilder
    from trainer.corpus.filters import content_hash
    from trainer.corpus.writer import SplitWriter

    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = CorpusArgs(output=str(tmp), progress=False)
    builder, writer = CorpusBuilder(args), SplitWriter(tmp, 1.0, args.shard_records, shuffle_buckets=0)
    try:
        for item in resolve_source(default_source()).items(args.max_bytes):
            if item.reason is not None:
                continue
            data = item.data if item.data is not None else item.content.encode("utf-8")
            if uniform_draw(0, "split", content_hash(item.content, data)) >= GENERAL_VALID_FRACTION:
                continue
            builder.add(item, writer)
            if builder.kept >= limit:
                break
        writer.close()
        shutil.rmtree(output, ignore_errors=True)
        os.rename(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"files": builder.kept, "source": f"{default_source()} (valid split)"}
