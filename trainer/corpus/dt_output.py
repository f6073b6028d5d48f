"""The last two stages of the datatrove corpus pipeline: shuffled shards, then stats.json."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import time
from collections import Counter
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from trainer.corpus.dt_steps import write_json
from trainer.corpus.writer import ShardWriter


def read_counts(counts_dir: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((counts_dir / stage).glob("*.json"))]


class WriteShards(PipelineStep):
    """Task m shuffles shuffle bucket m of each split (about 1/buckets of the kept files,
    held in memory as lines) into OUTPUT/<split>-<m>-<n>.jsonl.gz shards."""

    type = "codeparrot"
    name = "write shards"

    def __init__(self, args, shuffle_dir: str, counts_dir: str):
        super().__init__()
        self.args, self.shuffle_dir, self.counts_dir = args, shuffle_dir, counts_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out = {}
        for split in ("train", "valid"):
            lines = []
            for path in sorted((Path(self.shuffle_dir) / split / f"{rank:05d}").glob("*.jsonl.gz")):
                with gzip.open(path, "rb") as f:
                    lines.extend(f.read().splitlines())
            random.Random(f"shuffle-{self.args.seed}-{split}-{rank}").shuffle(lines)
            writer = ShardWriter(Path(self.args.output), f"{split}-{rank:05d}", self.args.shard_records)
            for line in lines:
                writer.write(json.loads(line))
            writer.close()
            out[split] = {"records": writer.records, "shards": writer.shards}
        write_json(Path(self.counts_dir) / "shards" / f"{rank:05d}.json", out)
        return
        yield  # a generator step, like the others


def move_one_to_valid(output: Path, least_train: list) -> str | None:
    """Moves the train record with the smallest split draw into valid (the single-process
    rule for a corpus whose valid split came out empty); returns its shard name."""
    draw, digest, bucket = min(least_train)
    moved = None
    for shard in sorted(output.glob(f"train-{bucket:05d}-*.jsonl.gz")):
        with gzip.open(shard, "rb") as f:
            records = [json.loads(line) for line in f]
        keep = [r for r in records if r["hash"] != digest]
        if len(keep) == len(records):
            continue
        moved = next(r for r in records if r["hash"] == digest)
        tmp_prefix = shard.name.removesuffix(".jsonl.gz") + ".rewrite"
        writer = ShardWriter(output, tmp_prefix, len(records) + 1)
        for r in keep:
            writer.write(r)
        writer.close()
        if writer.shards:
            (output / writer.shards[0]).replace(shard)
        else:
            shard.unlink()
        break
    if moved is None:
        return None
    writer = ShardWriter(output, "valid-00000", 1)
    writer.write(moved)
    writer.close()
    return writer.shards[0]


class Finish(PipelineStep):
    """Sums every task's counts into OUTPUT/stats.json (written last, as in the
    single-process path) and checks seen == kept + sum(dropped)."""

    type = "codeparrot"
    name = "finish"

    def __init__(self, args, specs: list[str], counts_dir: str, executor_info: dict):
        super().__init__()
        self.args, self.specs, self.counts_dir, self.info = args, specs, counts_dir, executor_info

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        write_json(Path(self.args.output) / "stats.json", self.corpus_stats())
        return
        yield

    def corpus_stats(self) -> dict:
        from trainer.corpus import REASONS

        counts, out = Path(self.counts_dir), Path(self.args.output)
        read, filt, kept = (read_counts(counts, s) for s in ("read", "filter", "kept"))
        dropped = Counter(dict.fromkeys(REASONS, 0))
        for c in read + filt:
            dropped.update(c["dropped"])
        read_out, filter_in, filter_out = (sum(c[k] for c in cs) for k, cs in
                                           (("out", read), ("in", filt), ("out", filt)))
        n_kept = sum(c["kept"] for c in kept)
        dropped["exact_duplicate"] += read_out - filter_in
        dropped["near_duplicate"] += filter_out - n_kept
        splits = {"train": {"records": 0, "shards": []}, "valid": {"records": 0, "shards": []}}
        for c in read_counts(counts, "shards"):
            for split, info in c.items():
                splits[split]["records"] += info["records"]
                splits[split]["shards"] += info["shards"]
        least = [c["least_train"] for c in kept if c["least_train"]]
        if self.args.valid_fraction > 0 and splits["valid"]["records"] == 0 and splits["train"]["records"] >= 2:
            shard = move_one_to_valid(out, least)
            if shard:
                splits["valid"] = {"records": 1, "shards": [shard]}
                splits["train"]["records"] -= 1
                splits["train"]["shards"] = sorted(p.name for p in out.glob("train-*.jsonl.gz"))
        started = json.loads((counts / "started.json").read_text())["time"]
        wall = time.time() - started
        seen = sum(c["seen"] for c in read)
        rss = {stage.name: max(json.loads(p.read_text())["peak_rss_mib"] for p in stage.glob("*.json"))
               for stage in sorted((counts / "rss").iterdir()) if any(stage.glob("*.json"))}
        stats = {
            "sources": self.specs, "seen": seen, "kept": n_kept,
            "dropped_total": sum(dropped.values()), "dropped": dict(dropped),
            "duplicates": {"exact": dropped["exact_duplicate"], "near": dropped["near_duplicate"]},
            "bytes_in": sum(c["bytes_in"] for c in read), "bytes_out": sum(c["bytes_out"] for c in kept),
            "near_dedup_skipped_small": sum(c["skipped_small"] for c in read_counts(counts, "minhash")),
            "splits": splits, "wall_s": round(wall, 3),
            "files_per_s": round(seen / wall, 1) if wall > 0 else None,
            "cpu_s": None,  # spread over task processes; see executor.read_cpu_s
            "executor": {**self.info, "read_cpu_s": round(sum(c["cpu_s"] for c in read), 3),
                         "peak_rss_mib_per_stage": rss},
            "args": dataclasses.asdict(self.args),
        }
        if stats["seen"] != stats["kept"] + stats["dropped_total"]:
            raise RuntimeError(f"counts do not add up: {stats}")
        return stats
