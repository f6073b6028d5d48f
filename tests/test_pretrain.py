"""`codeparrot pretrain`: optimiser groups, learning, checkpoints, guards, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_corpus_shards
from tokenizers import Tokenizer

from trainer.pretraining import checkpoint as ckpt
from trainer.model import build_model
from trainer.pretrain import main, perplexity
from trainer.pretraining.setup import parameter_groups

REPO = Path(__file__).resolve().parents[1]


def base_args(corpus, tokenizer, output, **kw) -> list[str]:
    args = {"corpus": corpus, "tokenizer": tokenizer, "output": output, "model-size": "test",
            "seq-length": 64, "batch-size": 4, "max-steps": 8, "warmup-steps": 2, "logging-steps": 1,
            "eval-steps": 4, "eval-batches": 2, "save-steps": 4, "report-to": "none",
            "dataloader-workers": 0, "mixed-precision": "no", "num-threads": 1, **kw}
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def metrics(output) -> list[dict]:
    return [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]


def train_losses(output) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(output) if "loss" in r}


def test_weight_decay_only_on_weight_matrices(tiny_tokenizer_dir):
    model = build_model("test", Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json")))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    expected = {n for n, _ in model.named_parameters()
                if n.endswith(".bias") or n.split(".")[-2] in ("ln_1", "ln_2", "ln_f")}
    assert no_decay_names == expected
    assert any(".ln_1.weight" in n for n in no_decay_names) and "transformer.ln_f.weight" in no_decay_names
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - expected
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}  # also the tied lm_head
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_perplexity_overflow_is_inf():
    assert perplexity(0.0) == 1.0 and perplexity(1e6) == math.inf


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    doc = {"content": "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n", "quality": 0.9}
    write_corpus_shards(folder, "train", [[doc] * 40])
    write_corpus_shards(folder, "valid", [[doc] * 10])
    return folder


def test_loss_goes_down_and_checkpoint_loads(toy_corpus, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    args = base_args(toy_corpus, tiny_tokenizer_dir, out, **{
        "max-steps": 30, "learning-rate": 3e-3, "eval-steps": 15, "save-steps": 10, "keep-last": 2,
        "fim-rate": 0.0, "mixed-precision": "bf16", "dataloader-workers": 1, "report-to": "tensorboard"})
    assert main(args) == 0
    losses = train_losses(out)
    assert len(losses) == 30 and losses[30] < 0.5 * losses[1]
    evals = [r for r in metrics(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [15, 30] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[1]["perplexity"] == pytest.approx(math.exp(evals[1]["eval_loss"]))
    row = metrics(out)[-2]
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "tflops_per_process"} <= set(row)
    assert row["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine decay to zero at max_steps
    # Layout: the last two checkpoints kept, `latest` names the newest, final/ holds the model.
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000020", "step-00000030"]
    assert (out / "latest").read_text().strip() == "step-00000030"
    assert list((out / "pretrain").rglob("events.out.tfevents.*"))  # TensorBoard

    import torch
    from transformers import AutoModelForCausalLM, pipeline

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.use_cache  # the served model generates with its KV cache
    saved = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-00000030")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    generate = pipeline("text-generation", model=str(out / "final"), tokenizer=str(out / "final"))
    text = generate("def add(a, b):", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("def add(a, b):") and len(text) > len("def add(a, b):")


def test_config_file_and_usage_errors(toy_corpus, tiny_tokenizer_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"corpus: {toy_corpus}\ntokenizer: {tiny_tokenizer_dir}\nmodel_size: test\n"
                      "seq_length: 32\nbatch-size: 2\nmax_steps: 50\nreport_to: none\nmixed_precision: 'no'\n"
                      "eval_steps: 0\ndataloader_workers: 0\n")
    out = tmp_path / "from-config"
    assert main(["--config", str(config), "--output", str(out), "--max-steps", "2"]) == 0  # flags win
    assert ckpt.read_state(out / "final")["step"] == 2
    assert main(["--config", str(config), "--output", str(out), "--max-steps", "3"]) == 2  # a run is there
    assert ckpt.read_state(out / "final")["step"] == 2  # untouched
    assert main(["--config", str(config), "--output", str(out), "--max-steps", "3", "--overwrite"]) == 0
    assert ckpt.read_state(out / "final")["step"] == 3 and len(ckpt.list_checkpoints(out)) == 1
    assert main(["--config", str(config)]) == 2  # no --output
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, tmp_path / "x", **{"mixed-precision": "fp8"})) == 2
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, tmp_path / "x", **{"seq-length": 4096})) == 2
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, tmp_path / "x", **{"loss-chunk-size": -1})) == 2
    assert main(base_args(tmp_path / "nope", tiny_tokenizer_dir, tmp_path / "x")) == 2
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, tmp_path / "x", resume="latest")) == 2
    assert main(["--config", str(config), "--bogus", "1"]) == 2
    (tmp_path / "bad.yaml").write_text("learning_rat: 1\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--output is required" in err and "--mixed-precision must be one of" in err
    assert "exceeds the model's 256 positions" in err and "learning_rat" in err
    assert "no complete checkpoint" in err and "already holds a run" in err and "--bogus" in err
    assert "--loss-chunk-size must be at least 0" in err


def test_nonfinite_loss_is_skipped_and_counted(toy_corpus, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "one-nan"
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, out, **{"fault-nan-loss-steps": "3"})) == 0
    rows = [r for r in metrics(out) if "loss" in r]
    assert rows[-1]["nonfinite_skipped"] == 1 and rows[2]["loss"] is None  # step 3 had no update
    assert all(math.isfinite(r["loss"]) for r in rows if r["loss"] is not None)
    assert ckpt.read_state(out / "final")["nonfinite_skipped"] == 1


def test_too_many_nonfinite_steps_stop_and_keep_the_last_good_checkpoint(toy_corpus, tiny_tokenizer_dir,
                                                                         tmp_path, caplog):
    out = tmp_path / "nans"
    args = base_args(toy_corpus, tiny_tokenizer_dir, out, **{
        "save-steps": 2, "fault-nan-loss-steps": "5,6,7", "max-nonfinite": 3})
    assert main(args) == 1
    assert "3 non-finite steps in a row" in caplog.text
    assert (out / "latest").read_text().strip() == "step-00000004"
    assert not (out / "final").exists() and ckpt.latest_checkpoint(out).name == "step-00000004"


def test_resume_with_another_learning_rate_continues_the_schedule_with_it(toy_corpus, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "cycles"
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, out, **{"max-steps": 4, "learning-rate": "1e-3"})) == 0
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, out, **{
        "max-steps": 8, "learning-rate": "5e-4", "resume": "latest"})) == 0
    lrs = {r["step"]: r["lr"] for r in metrics(out) if "lr" in r}
    # Cosine with 2 warmup steps over 8: the factor after step s is 0.5 * (1 + cos(pi * (s - 2) / 6)).
    for s in (5, 6, 8):
        assert lrs[s] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)), rel=1e-6), s
    assert lrs[4] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (4 - 2) / 2)), abs=1e-12)   # the first run's own schedule


def test_max_minutes_stops_and_saves(toy_corpus, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "timed"
    assert main(base_args(toy_corpus, tiny_tokenizer_dir, out, **{
        "max-steps": 1000, "max-minutes": 1e-6, "gradient-checkpointing": "true"})) == 0
    state = ckpt.read_state(out / "final")
    assert state["step"] == 1 and state["final"]


def run_cli(args: list[str], launcher: list[str] | None = None, env: dict | None = None):
    cmd = (launcher or [sys.executable, "-m", "trainer.cli", "pretrain"]) + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    """Real SIGKILLs (after step 6, and in the middle of the step-8 save), then `--resume`.

    Tolerance: none. The resumed run replays the same data (the stream is a function of
    the seed and the batches consumed), restores weights, AdamW moments, the schedule and
    every RNG (dropout) bit for bit, and runs the same CPU kernels with the same thread
    count, so each logged loss must be exactly equal, and so must the running digest of
    the batches trained on.
    """
    kw = {"max-steps": 10, "save-steps": 4, "eval-steps": 5, "gradient-accumulation-steps": 2,
          "fim-rate": 0.5, "dataloader-workers": 1, "shuffle-buffer": 8, "mixed-precision": "bf16"}
    ref, run = tmp_path / "ref", tmp_path / "killed"
    assert main(base_args(tiny_corpus_dir, tiny_tokenizer_dir, ref, **kw)) == 0  # in-process: same kernels

    killed = run_cli(base_args(tiny_corpus_dir, tiny_tokenizer_dir, run, **kw, **{"fault-kill-at-step": 6}))
    assert killed.returncode == -9
    assert (run / "latest").read_text().strip() == "step-00000004"
    resumed = run_cli(base_args(tiny_corpus_dir, tiny_tokenizer_dir, run, **kw, **{"fault-kill-in-save": 8})
                      + ["--resume"])
    assert resumed.returncode == -9
    # Killed mid-save: the half-written step 8 is a temporary folder, never the latest.
    assert (run / "checkpoints" / ".tmp-step-00000008").is_dir()
    assert ckpt.latest_checkpoint(run).name == "step-00000004"
    final = run_cli(base_args(tiny_corpus_dir, tiny_tokenizer_dir, run, **kw) + ["--resume", "latest"])
    assert final.returncode == 0, final.stderr[-2000:]
    assert not (run / "checkpoints" / ".tmp-step-00000008").exists()

    assert without_timing(metrics(run)) == without_timing(metrics(ref))
    assert len(train_losses(run)) == 10
    ref_state, run_state = ckpt.read_state(ref / "final"), ckpt.read_state(run / "final")
    assert run_state["step"] == ref_state["step"] == 10
    assert run_state["data_digest"] == ref_state["data_digest"]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "tokens_per_cpu_s", "tflops_per_process", "elapsed_s")}
            for r in rows]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    """Two DDP processes (gloo) on the CPU.

    `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set up
    (`--mpirun_hostfile`); the torchrun-based launcher with ACCELERATE_USE_CPU starts two.
    """
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", "trainer/pretrain.py"]
    result = run_cli(base_args(tiny_corpus_dir, tiny_tokenizer_dir, out, **{
        "max-steps": 4, "gradient-accumulation-steps": 2, "eval-steps": 4, "save-steps": 4}), launcher,
        {"ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    state = ckpt.read_state(out / "final")
    assert state["world_size"] == 2 and state["step"] == 4
    digests = state["data_digests"]
    assert len(digests) == 2 and digests[0] != digests[1]  # each rank trained on its own data
    assert [r["step"] for r in metrics(out) if "eval_loss" in r] == [4]
    assert metrics(out)[0]["tokens"] == 2 * 2 * 4 * 64  # processes x accumulation x batch x length


def test_shipped_configs_parse():
    import yaml

    from trainer.pretraining.args import PretrainArguments, read_config

    for path in sorted((REPO / "configs" / "pretrain").glob("*.yaml")):
        PretrainArguments(**read_config(str(path)))  # every key is an argument
    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        assert "distributed_type" in yaml.safe_load(path.read_text())
