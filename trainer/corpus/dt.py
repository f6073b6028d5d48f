"""The corpus stage on datatrove executors: `codeparrot corpus --executor local|slurm|ray`.

The same recipe as the single-process path (trainer/corpus/__init__.py), cut into stages whose
tasks share nothing but files under the work folder (default OUTPUT/.datatrove):

  read      N tasks  each reads its share of the sources, read checks and size bounds,
                     measures the filters; spills documents; exact-dedup signatures
  exact     N tasks  datatrove ExactFindDedups (each a range of the hash space)
  filter    N tasks  ExactDedupFilter, then the quality filters' verdicts; MinHash
                     signatures (datatrove MinhashDedupSignature over identifier sets)
  buckets   B tasks  MinhashDedupBuckets (one per LSH band)
  clusters  1 task   MinhashDedupCluster (memory: the duplicate pairs only)
  near      N tasks  MinhashDedupFilter; kept records go to shuffle buckets
  shards    S tasks  each shuffles one bucket into train-*/valid-* shards
  finish    1 task   stats.json from every task's counts

Every signature, duplicate list and intermediate file is on disk, sorted and streamed,
so a task's memory does not grow with the corpus (the shard tasks hold one shuffle
bucket, 1/S of the kept files). datatrove marks each finished task in
WORK/logs/<stage>/completions/; running the same command again skips them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                  ExactFindDedups)
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter)

from trainer.corpus.dt_output import Finish, WriteShards
from trainer.corpus.dt_steps import (CorpusFilter, CorpusMinhashSignature, CorpusRead, LoadDocs, RssProbe,
                                     ShuffleOut, SpillDocs, document_digest, write_json)

EXECUTORS = ("single", "local", "slurm", "ray")


class StageFailed(RuntimeError):
    pass


def minhash_config(args) -> MinhashConfig:
    """LSH bands x rows for --near_threshold within --num_perm hashes, chosen as datasketch
    does for the single-process path (equal weights on false positives and negatives)."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(args.near_threshold, args.num_perm, 0.5, 0.5)
    return MinhashConfig(n_grams=1, num_buckets=bands, hashes_per_bucket=rows, seed=1)


def build_stages(args, specs: list[str], work: Path) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of each stage in order."""
    n, counts = args.tasks, str(work / "counts")
    d = {k: str(work / k) for k in ("docs1", "docs2", "exact_sigs", "exact_dups", "mh_sigs", "mh_buckets",
                                      "mh_clusters", "shuffle")}
    exact_on, near_on = "exact_dedup" not in args.disable, "near_dedup" not in args.disable
    exact_cfg = ExactDedupConfig(content_getter=document_digest)
    mh_cfg = minhash_config(args)
    out_tail = [ShuffleOut(args, d["shuffle"], args.shuffle_buckets, counts)]
    filter_tail = [CorpusFilter(counts)] + (
        [SpillDocs(d["docs2"]), CorpusMinhashSignature(d["mh_sigs"], mh_cfg, args.near_min_tokens, counts)]
        if near_on else out_tail)
    read = [CorpusRead(args, specs, counts)]
    stages = []
    if exact_on:
        stages += [("read", read + [SpillDocs(d["docs1"]), ExactDedupSignature(d["exact_sigs"], exact_cfg, n)], n),
                   ("exact", [ExactFindDedups(d["exact_sigs"], d["exact_dups"], exact_cfg)], n),
                   ("filter", [LoadDocs(d["docs1"]), ExactDedupFilter(d["exact_dups"], exact_cfg)] + filter_tail, n)]
    else:
        stages += [("read", read + filter_tail, n)]
    if near_on:
        stages += [("buckets", [MinhashDedupBuckets(d["mh_sigs"], d["mh_buckets"], config=mh_cfg)], mh_cfg.num_buckets),
                   ("clusters", [MinhashDedupCluster(d["mh_buckets"], d["mh_clusters"], config=mh_cfg)], 1),
                   ("near", [LoadDocs(d["docs2"]), MinhashDedupFilter(d["mh_clusters"])] + out_tail, n)]
    info = {"executor": args.executor, "tasks": n, "workers": args.workers, "work_dir": str(work),
            "minhash": {"bands": mh_cfg.num_buckets, "rows": mh_cfg.hashes_per_bucket}}
    stages += [("shards", [WriteShards(args, d["shuffle"], counts)], args.shuffle_buckets),
               ("finish", [Finish(args, specs, counts, info)], 1)]
    return [(name, pipeline + [RssProbe(counts, name)], tasks) for name, pipeline, tasks in stages]


def _executor(args, name: str, pipeline: list, tasks: int, logs: Path, depends=None):
    workers = min(args.workers if args.workers > 0 else tasks, tasks)
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor
        # fork: the driver holds no threads here, and a forkserver re-imports for every stage
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs),
                                     start_method="fork")
    if args.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs),
                                   cpus_per_task=1, mem_per_cpu_gb=args.mem_per_cpu_gb)
    from datatrove.executor.slurm import SlurmPipelineExecutor
    sbatch = dict(a.split("=", 1) for a in args.slurm_sbatch)
    return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs),
                                 time=args.slurm_time, partition=args.slurm_partition, cpus_per_task=1,
                                 mem_per_cpu_gb=int(max(1, args.mem_per_cpu_gb)), job_name=f"corpus-{name}",
                                 env_command=args.slurm_env_command, sbatch_args=sbatch or None,
                                 depends=depends)


def run_distributed(args, specs: list[str]) -> dict | None:
    """Runs (local, ray) or submits (slurm) every stage; returns the stats once finished."""
    work = Path(args.work_dir or Path(args.output) / ".datatrove")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    write_json(work / "counts" / "started.json", {"time": time.time()})
    stages = build_stages(args, specs, work)
    if args.executor == "ray":
        import ray
        if not ray.is_initialized():
            ray.init(address=args.ray_address, log_to_driver=False)
    previous = None
    for i, (name, pipeline, tasks) in enumerate(stages):
        logs = work / "logs" / f"{i}-{name}"
        executor = _executor(args, name, pipeline, tasks, logs, depends=previous)
        if args.executor == "slurm":  # the chain is submitted at once, each job after the last
            previous = executor
            continue
        try:
            executor.run()
        except Exception as err:  # a task raised: the others' completions stay on disk
            raise StageFailed(f"stage {name!r} failed ({type(err).__name__}: {err}); task logs in "
                              f"{logs}/logs; run the same command again to resume") from err
        missing = executor.get_incomplete_ranks(skip_completed=True)
        if missing:
            raise StageFailed(f"stage {name!r}: tasks {missing[:20]} did not complete; logs in {logs}/logs; "
                              f"run the same command again to resume")
    if args.executor == "slurm":
        previous.run()
        print(f"codeparrot corpus: submitted {len(stages)} Slurm jobs; stats.json appears in "
              f"{args.output} when the last one ends (logs: {work / 'logs'})", file=sys.stderr)
        return None
    return json.loads((Path(args.output) / "stats.json").read_text())
