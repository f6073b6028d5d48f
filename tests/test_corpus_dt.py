"""`codeparrot corpus --executor local|ray`: the datatrove pipeline gives the single-process
result (same counts, same kept files, same record fields), counts bad input, reports a
crashing task, and resumes a killed run without redoing finished tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trainer.corpus as corpus
import trainer.corpus.sources as corpus_sources
from tests.test_corpus import good_source, near_copy, read_shards, write
from trainer.corpus import REASONS, main
from trainer.corpus.filters import content_hash

ROOT = Path(__file__).resolve().parents[1]


def planted_tree(tmp_path: Path, monkeypatch) -> list[str]:
    """A folder and a jsonl file with planted exact and near duplicates and bad files."""
    src = tmp_path / "src"
    for i in range(14):
        write(src / f"pkg{i % 3}" / f"mod{i}.py", good_source(i))
    write(src / "copies" / "mod0_copy.py", good_source(0))  # exact duplicate
    write(src / "copies" / "mod1_spaced.py", good_source(1).replace("\n", "  \n"))  # exact, modulo whitespace
    write(src / "copies" / "mod2_edit.py", near_copy(good_source(2)))  # near duplicate
    write(src / "tiny.py", "x = 1\n")
    write(src / "flat.py", "import os\nfor part in os.sep:\n    print(part)\n" * 3)
    write(src / "binary.py", b"import os\x00\x01" + good_source(30).encode())
    write(src / "latin1.py", "# caf\u00e9\n".encode("latin-1") + good_source(31).encode())
    write(src / "big.py", good_source(32) * 30)
    write(src / "locked.py", good_source(33))
    real = corpus_sources.read_limited

    def read_limited(path, limit):  # the failure chmod 000 gives a non-root user
        if Path(path).name == "locked.py":
            raise PermissionError(13, "Permission denied", path)
        return real(path, limit)
    monkeypatch.setattr(corpus_sources, "read_limited", read_limited)
    (src / "broken.py").symlink_to(src / "missing.py")
    (src / "ping.py").symlink_to(src / "pong.py")
    (src / "pong.py").symlink_to(src / "ping.py")
    (src / "pkg0" / "loop").symlink_to(src)
    os.mkfifo(src / "fifo.py")
    rows = [json.dumps({"repo_name": "octo/cat", "path": f"cat/m{i}.py", "license": "mit",
                        "content": good_source(i)}) for i in range(40, 46)]
    rows += [json.dumps({"content": good_source(3)}), "{not json", json.dumps({"path": "x.py"})]
    write(tmp_path / "data" / "part-0.jsonl", "\n".join(rows) + "\n")
    return [str(src), str(tmp_path / "data" / "part-0.jsonl")]


def run(out: Path, sources: list[str], *args: str, expect_rc: int = 0) -> dict | None:
    argv = [a for s in sources for a in ("--source", s)]
    rc = main(argv + ["--output", str(out), "--no_progress", "--max_bytes", "20000", *args])
    assert rc == expect_rc
    if rc:
        return None
    stats = json.loads((out / "stats.json").read_text())
    assert stats["seen"] == stats["kept"] + sum(stats["dropped"].values())
    assert set(stats["dropped"]) == set(REASONS)
    rows = read_shards(out, "train") + read_shards(out, "valid")
    assert len(rows) == stats["kept"] == stats["splits"]["train"]["records"] + stats["splits"]["valid"]["records"]
    stats["by_hash"] = {r["hash"]: r for r in rows}
    assert len(stats["by_hash"]) == len(rows)
    return stats


def digest_of(text: str) -> str:
    return content_hash(text, text.encode()).hex()


# Which copy of a planted duplicate survives depends on arrival order, which the tasks do
# not share: exact copies share a hash but not their path or whitespace; of the near pair,
# datatrove keeps its cluster's root, the single-process path the first file it met.
EXACT_GROUPS = {digest_of(good_source(0)), digest_of(good_source(1))}
NEAR_PAIR = {digest_of(good_source(2)), digest_of(near_copy(good_source(2)))}


def assert_same_result(single: dict, dist: dict) -> None:
    assert dist["dropped"] == single["dropped"]
    assert dist["seen"] == single["seen"] and dist["kept"] == single["kept"]
    assert dist["bytes_in"] == single["bytes_in"]
    assert set(dist["by_hash"]) ^ set(single["by_hash"]) <= NEAR_PAIR
    assert len(set(dist["by_hash"]) & NEAR_PAIR) == len(set(single["by_hash"]) & NEAR_PAIR)
    for h, record in single["by_hash"].items():
        if h in EXACT_GROUPS:
            assert set(dist["by_hash"][h]) == set(record)
        elif h not in NEAR_PAIR:
            assert dist["by_hash"][h] == record
    assert dist["splits"]["valid"]["records"] == single["splits"]["valid"]["records"]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    sources = planted_tree(tmp_path, monkeypatch)
    single = run(tmp_path / "single", sources)
    assert {k: v for k, v in single["dropped"].items() if v} == {
        "exact_duplicate": 3, "near_duplicate": 1, "too_small": 1, "few_assignments": 1, "binary": 1,
        "invalid_utf8": 1, "too_large": 1, "unreadable": 1, "broken_symlink": 1, "symlink_loop": 3,
        "not_a_file": 1, "bad_json": 1, "missing_content": 1}
    return sources, single


def test_local_executor_matches_single_process(tmp_path, tree):
    sources, single = tree
    out = tmp_path / "dt"
    dist = run(out, sources, "--executor", "local", "--tasks", "3", "--workers", "2", "--shuffle_buckets", "4")
    assert_same_result(single, dist)
    assert dist["executor"]["tasks"] == 3 and dist["near_dedup_skipped_small"] == single["near_dedup_skipped_small"]
    # shuffled across shards: every shard holds files of both sources
    assert len(dist["splits"]["train"]["shards"]) > 1
    assert not (out / ".datatrove" / "docs1").exists()  # intermediate data removed, logs kept
    assert (out / ".datatrove" / "logs" / "0-read" / "completions").is_dir()
    # a finished output is not silently overwritten
    assert main(["--source", sources[0], "--output", str(out), "--executor", "local"]) == 2


def test_one_task_and_dedup_switches(tmp_path, tree):
    sources, single = tree
    assert_same_result(single, run(tmp_path / "one", sources, "--executor", "local", "--tasks", "1"))
    off = run(tmp_path / "s-off", sources, "--disable", "near_dedup")
    assert len(set(off["by_hash"]) & NEAR_PAIR) == 2
    assert_same_result(off, run(tmp_path / "d-off", sources, "--executor", "local", "--tasks", "2",
                                "--disable", "near_dedup"))
    near_only = run(tmp_path / "s-near", sources, "--disable", "exact_dedup")  # copies fall to near dedup
    assert near_only["dropped"]["exact_duplicate"] == 0 and near_only["dropped"]["near_duplicate"] == 4
    assert_same_result(near_only, run(tmp_path / "d-near", sources, "--executor", "local", "--tasks", "2",
                                      "--disable", "exact_dedup"))


def test_crashing_task_is_reported_and_resumable(tmp_path, tree, monkeypatch, capsys):
    sources, single = tree
    real = corpus.filter_verdict

    def crash_on_module_45(a, off, tok, content, data, digest):  # a fault in task 1 only
        if "alpha_45(" in content:
            raise RuntimeError("injected fault")
        return real(a, off, tok, content, data, digest)
    monkeypatch.setattr(corpus, "filter_verdict", crash_on_module_45)
    out = tmp_path / "dt"
    args = ("--executor", "local", "--tasks", "4", "--workers", "1")
    run(out, sources, *args, expect_rc=1)
    err = capsys.readouterr().err
    assert "stage 'read' failed" in err and "injected fault" in err and "run the same command again" in err
    done = sorted((out / ".datatrove" / "logs" / "0-read" / "completions").iterdir())
    assert [p.name for p in done] == ["00000"]  # tasks run in order with one worker
    stamps = {p.name: (out / ".datatrove" / "counts" / "read" / f"{p.name}.json").stat().st_mtime_ns for p in done}
    monkeypatch.setattr(corpus, "filter_verdict", real)
    assert_same_result(single, run(out, sources, *args))
    for name, stamp in stamps.items():  # finished tasks were not run again
        assert (out / ".datatrove" / "counts" / "read" / f"{name}.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_tasks(tmp_path, tree):
    sources, single = tree
    out = tmp_path / "dt"
    argv = [a for s in sources for a in ("--source", s)] + [
        "--output", str(out), "--no_progress", "--max_bytes", "20000", "--executor", "local",
        "--tasks", "6", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the real process cannot see this test's monkeypatch: locked.py reads fine there
    os.unlink(Path(sources[0]) / "locked.py")
    single = run(tmp_path / "single2", sources)
    proc = subprocess.Popen([sys.executable, "-m", "trainer.corpus", *argv], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / ".datatrove" / "logs" / "2-filter" / "completions" / "00000"
    try:
        while not marker.exists():  # kill it in the middle of the filter stage
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "stats.json").exists()
    counts, logs = out / ".datatrove" / "counts", out / ".datatrove" / "logs"
    # Only tasks with a completion marker are finished: one killed between writing its counts
    # and its marker is rightly run again.
    finished = {stage: {m.name for m in (logs / log / "completions").iterdir()}
                for stage, log in (("read", "0-read"), ("filter", "2-filter"))}
    stamps = {p: p.stat().st_mtime_ns for stage in finished for p in (counts / stage).glob("*.json")
              if p.stem in finished[stage]}
    assert len(stamps) >= 7  # all of the read stage and at least one filter task
    dist = run(out, sources, "--executor", "local", "--tasks", "6", "--workers", "2")
    assert_same_result(single, dist)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path, tree):
    ray = pytest.importorskip("ray", reason="pip install '.[ray]'")
    sources, _ = tree
    os.unlink(Path(sources[0]) / "locked.py")  # Ray's workers cannot see this test's injected fault
    # the default MinHash settings: with 16 permutations (2 LSH bands) the planted near pair
    # escaped datatrove's LSH, a difference of settings rather than of executors
    single = run(tmp_path / "single2", sources)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        dist = run(tmp_path / "ray", sources, "--executor", "ray", "--tasks", "2", "--workers", "2",
                   "--mem_per_cpu_gb", "0.5", "--shuffle_buckets", "2")
    finally:
        ray.shutdown()
    assert_same_result(single, dist)


def test_executor_usage_errors(tmp_path, capsys):
    write(tmp_path / "src" / "a.py", good_source(0))
    base = ["--source", str(tmp_path / "src"), "--output", str(tmp_path / "out")]
    assert main(base + ["--executor", "slurm"]) == 2
    assert "--slurm_partition" in capsys.readouterr().err
    assert main(base + ["--executor", "local", "--tasks", "0"]) == 2
    assert main(base + ["--executor", "mpi"]) == 2


def shard_union(source, world: int) -> list[tuple]:
    items = [it for rank in range(world) for it in source.items(20000, rank, world)]
    return sorted((it.reason or "", it.content or "", it.size) for it in items)


def test_sources_are_split_across_tasks_without_loss_or_overlap(tmp_path, monkeypatch):
    from trainer.corpus.sources import resolve_source

    folder, jsonl = planted_tree(tmp_path, monkeypatch)
    for i in range(3):
        write(tmp_path / "many" / f"part-{i}.jsonl", "".join(
            json.dumps({"content": good_source(10 * i + k)}) + "\n" for k in range(4)))
    write(tmp_path / "hub" / "train.jsonl", "".join(json.dumps({"content": good_source(i)}) + "\n" for i in range(7)))
    sources = [resolve_source(folder), resolve_source(jsonl), resolve_source(str(tmp_path / "many" / "*.jsonl")),
               resolve_source("hf:json", hf_data_files=str(tmp_path / "hub" / "train.jsonl"))]
    for source in sources:
        whole = shard_union(source, 1)
        assert len(whole) > 3
        for world in (2, 3, 5):  # fewer and more tasks than the jsonl glob has files
            assert shard_union(source, world) == whole, (source.spec, world)


def test_slurm_chain_carries_the_options(tmp_path):
    """The Slurm executors are built (not submitted: no cluster here) one per stage, each
    depending on the previous one, with the partition, time, memory and extra sbatch options."""
    from trainer.corpus import CorpusArgs
    from trainer.corpus.dt import _executor, build_stages

    args = CorpusArgs(output=str(tmp_path / "out"), executor="slurm", tasks=8, workers=4, slurm_partition="cpu",
                      slurm_time="02:00:00", mem_per_cpu_gb=3, slurm_sbatch=["account=proj"])
    chain, previous = [], None
    for name, pipeline, tasks in build_stages(args, [str(tmp_path)], tmp_path / "work"):
        previous = _executor(args, name, pipeline, tasks, tmp_path / "work" / "logs" / name, depends=previous)
        chain.append(previous)
    assert [e.job_name for e in chain] == [f"corpus-{n}" for n in
                                            ("read", "exact", "filter", "buckets", "clusters", "near", "shards", "finish")]
    assert all(e.depends is d for e, d in zip(chain[1:], chain))
    sbatch = chain[0].get_sbatch_args()
    assert (sbatch["partition"], sbatch["time"], sbatch["mem-per-cpu"], sbatch["account"]) == ("cpu", "02:00:00", "3G", "proj")
    assert (chain[0].world_size, chain[0].workers, chain[-1].world_size) == (8, 4, 1)
