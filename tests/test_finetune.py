"""`codeparrot finetune` and `codeparrot pretrain --init-from`: a real fine-tune of the test
model, the held-out split, the before/after table, and every bad input of the command."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_MODULES, STDLIB

from codeparrot_ls.status import DEFAULT_MODEL_DIR
from trainer.pretraining import checkpoint as ckpt
from trainer.finetune import main
from trainer.finetune.merge import SHARES, choose_share
from trainer.finetune.data import DataError, read_records, build_finetune_corpus, build_general_set, split_held_out

# Real modules that none of the fixtures trains its tokenizer on.
OWN_CODE = ["bisect.py", "colorsys.py", "calendar.py", "gzip.py", "sched.py", "queue.py", "netrc.py", "base64.py"]


def copy_modules(folder: Path, modules: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, module in enumerate(modules):
        shutil.copy(STDLIB / module, folder / f"m{i}_{Path(module).name}")
    return folder


def fake_records(n: int) -> list[dict]:
    return [{"hash": f"{i:032x}", "path": f"f{i}.py", "size": 10} for i in range(n)]


def test_held_out_split_is_seeded_disjoint_and_order_free():
    records = fake_records(50)
    train, held = split_held_out(records, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert {r["path"] for r in train}.isdisjoint(r["path"] for r in held)
    assert {r["path"] for r in train} | {r["path"] for r in held} == {r["path"] for r in records}
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert split_held_out(shuffled, 0.1, seed=3) == (train, held)       # the order files are read in
    assert split_held_out(records, 0.1, seed=4)[1] != held              # the seed decides
    assert [len(part) for part in split_held_out(fake_records(3), 0.01, 0)] == [2, 1]   # at least one held out
    assert [len(part) for part in split_held_out(fake_records(2), 0.9, 0)] == [1, 1]    # at least one trained on
    with pytest.raises(DataError):
        split_held_out(fake_records(1), 0.5, 0)


def test_a_near_duplicate_is_never_on_both_sides(tmp_path):
    source = copy_modules(tmp_path / "src", OWN_CODE)
    text = (STDLIB / "calendar.py").read_text(encoding="utf-8")
    (source / "calendar_copy.py").write_text(text.replace("firstweekday", "first_weekday"), encoding="utf-8")
    first = build_finetune_corpus([str(source)], tmp_path / "corpus", 0.3, seed=0)
    assert first["dropped"] == {"near_duplicate": 1}
    assert first["train"]["files"] + first["held_out"]["files"] == len(OWN_CODE)
    again = build_finetune_corpus([str(source)], tmp_path / "corpus2", 0.3, seed=0)
    assert again["held_out"]["paths"] == first["held_out"]["paths"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_replay_mixes_in_general_code_but_never_the_general_set(tmp_path):
    source = copy_modules(tmp_path / "src", OWN_CODE)
    summary = build_finetune_corpus([str(source)], tmp_path / "corpus", 0.2, seed=0, replay=0.5)
    train = read_records(tmp_path / "corpus", "train")
    own = {r["hash"] for r in train if re.match(r"m\d+_", r["path"])}
    replayed = [r for r in train if r["hash"] not in own]
    assert len(own) == summary["train"]["files"] and len(replayed) == summary["replay"]["files"] > 0
    # Half the training bytes (the last file drawn may overshoot by at most its own size).
    assert summary["train"]["bytes"] <= summary["replay"]["bytes"] < summary["train"]["bytes"] + \
        max(r["size"] for r in replayed)
    assert [r["path"] for r in train[:3]] != sorted(r["path"] for r in train)[:3]   # shuffled in, not appended
    build_general_set(tmp_path / "general", 1000)
    general = {r["hash"] for r in read_records(tmp_path / "general", "valid")}
    assert general and not general & {r["hash"] for r in replayed}
    again = build_finetune_corpus([str(source)], tmp_path / "corpus2", 0.2, seed=0, replay=0.5)
    assert again["replay"] == summary["replay"]
    assert [r["hash"] for r in read_records(tmp_path / "corpus2", "train")] == [r["hash"] for r in train]
    assert build_finetune_corpus([str(source)], tmp_path / "corpus3", 0.2, seed=0)["replay"]["files"] == 0


def test_the_merge_takes_the_largest_share_within_the_budget(tmp_path, tiny_checkpoint_dir):
    """A 'fine-tuned' model far from the start (weights scaled and shaken): the full share
    forgets far past the budget, so a smaller one is chosen, the largest that stays within it."""
    import torch
    from transformers import GPT2LMHeadModel

    from codeparrot_ls.engine.torch_engine import TorchEngine

    model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3).add_(torch.randn_like(p) * 0.2)
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_checkpoint_dir, tuned)
    model.save_pretrained(tuned)
    texts = [(STDLIB / m).read_text(encoding="utf-8")[:4000] for m in OWN_CODE[:3]]
    engine = TorchEngine(tuned)
    share, tried = choose_share(engine, tiny_checkpoint_dir, texts, budget=0.08)
    reference = tried[0]["perplexity"]
    assert tried[1] == {"share": 1.0, "perplexity": tried[1]["perplexity"]} and tried[1]["perplexity"] > 1.08 * reference
    assert tried[-1]["share"] == share and tried[-1]["perplexity"] <= 1.08 * reference
    assert all(t["perplexity"] > 1.08 * reference for t in tried[1:-1]) and share < 1.0
    start = GPT2LMHeadModel.from_pretrained(tiny_checkpoint_dir).state_dict()
    name = "transformer.h.0.mlp.c_fc.weight"
    weights = engine.model.state_dict()
    assert torch.allclose(weights[name], start[name] + share * (model.state_dict()[name] - start[name]), atol=1e-6)
    assert choose_share(TorchEngine(tuned), tiny_checkpoint_dir, texts, budget=1e6)[0] == 1.0


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_checkpoint_dir):
    """One real fine-tune of the test model on a few files: (output folder, captured stdout)."""
    tmp = tmp_path_factory.mktemp("finetune")
    source = copy_modules(tmp / "src", OWN_CODE)
    general = copy_modules(tmp / "general", SAMPLE_MODULES[:1])
    out = tmp / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "finetune", "--source", str(source), "--output", str(out),
           "--init-from", str(tiny_checkpoint_dir), "--held-out", "0.25", "--max-steps", "16", "--minutes", "5",
           "--learning-rate", "3e-3", "--positions", "6", "--general", str(general)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, cmd


@pytest.mark.slow
def test_finetune_learns_exports_and_writes_the_table(finetuned, tiny_checkpoint_dir):
    from transformers import AutoModelForCausalLM

    out, stdout, _ = finetuned
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["held_out_loss_best"] < summary["held_out_loss_start"]
    assert summary["steps"] > 0 and summary["tokens"] > 0
    # The model kept is the best evaluated one, and it loads as a Hugging Face model.
    assert json.loads((out / "train" / "final" / "best.json").read_text())["eval_loss"] == summary["held_out_loss_best"]
    model = AutoModelForCausalLM.from_pretrained(out / "train" / "final")
    assert model.config.n_embd == json.loads((tiny_checkpoint_dir / "config.json").read_text())["n_embd"]
    assert (out / "train" / "final" / "tokenizer.json").read_bytes() == (tiny_checkpoint_dir / "tokenizer.json").read_bytes()
    # The table: printed, and written as JSON and markdown with before and after for each metric.
    table = json.loads((out / "comparison.json").read_text())
    rows = {r["metric"]: r for r in table["rows"]}
    ppl = rows["held-out perplexity"]
    assert ppl["after"] < ppl["before"] and ppl["change"] < 0
    assert "line completion ES, random cursor, left to right" in rows and "line completion ES, after the indentation, FIM" in rows
    assert "general perplexity (standard library, valid split)" in rows
    assert "held-out perplexity" in (out / "comparison.md").read_text() and "held-out perplexity" in stdout
    # The held-out files were never trained on.
    split = json.loads((out / "corpus" / "held_out.json").read_text())
    assert split["held_out"]["files"] == 2 and split["train"]["files"] == len(OWN_CODE) - 2
    # The merge chose a share within the forgetting budget, and the model served is the merged one.
    merged = json.loads((out / "train" / "merged" / "merge.json").read_text())
    assert merged["share"] in (0.0, *SHARES) and merged["budget"] == 0.02
    chosen = next(t for t in merged["tried"] if t["share"] == merged["share"])
    assert chosen["perplexity"] <= merged["tried"][0]["perplexity"] * (1 + merged["budget"])
    # The serving choice is in export.json, as the quickstart writes it.
    serving = json.loads((out / "model" / "export.json").read_text())["serving"]
    lc = json.loads((out / "eval" / "after" / "line_random.json").read_text())["results"]
    assert serving["fim"] is (lc["fim_spm"]["edit_similarity"] >= lc["no_fim"]["edit_similarity"])


@pytest.mark.slow
def test_the_finetuned_model_serves_and_a_rerun_skips_every_stage(finetuned):
    from trainer.quickstart import demo

    out, _, cmd = finetuned
    served = demo(out / "model")   # the real language server, over stdio, as editors start it
    assert Path(served["model"]).resolve() == (out / "model").resolve()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done, skipped") == 4 and "held-out perplexity" in again.stdout


def run_main(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_sources_exit_2_and_write_nothing(tmp_path, tiny_checkpoint_dir, capsys):
    init = ["--init-from", str(tiny_checkpoint_dir)]
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_main(["--source", str(empty), "--output", str(out), *init], capsys)
    assert code == 2 and "no Python files" in err and not out.exists()

    code, err = run_main(["--source", str(tmp_path / "missing"), "--output", str(out), *init], capsys)
    assert code == 2 and "missing" in err and not out.exists()

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for i in range(3):
        (tiny / f"t{i}.py").write_text(f"value = {i}\nother = {i + 1}\n")
    code, err = run_main(["--source", str(tiny), "--output", str(out), *init], capsys)
    assert code == 2 and "3 file(s)" in err and "0 kept" in err and "few assignments" in err and not out.exists()

    one = copy_modules(tmp_path / "one", ["calendar.py"])
    code, err = run_main(["--source", str(one), "--output", str(out), *init], capsys)
    assert code == 2 and "1 kept" in err and "at least 2 files" in err and not out.exists()

    code, err = run_main(["--source", str(one), "--output", str(out), "--held-out", "1.5", *init], capsys)
    assert code == 2 and "--held-out" in err
    code, err = run_main(["--output", str(out), *init], capsys)
    assert code == 2 and "--source is required" in err


def test_bad_starting_checkpoints_exit_2(tmp_path, tiny_checkpoint_dir, tiny_onnx_dir, capsys, monkeypatch):
    source = copy_modules(tmp_path / "src", OWN_CODE[:3])
    args = ["--source", str(source), "--output", str(tmp_path / "out")]
    code, err = run_main([*args, "--init-from", str(tiny_onnx_dir)], capsys)
    assert code == 2 and "exported ONNX folder" in err

    code, err = run_main([*args, "--init-from", str(DEFAULT_MODEL_DIR)], capsys)   # the shipped ONNX model
    assert code == 2 and "exported ONNX folder" in err

    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_checkpoint_dir, mismatched)
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.json", mismatched / "tokenizer.json")   # 16,384 tokens, 1,024 rows
    code, err = run_main([*args, "--init-from", str(mismatched)], capsys)
    assert code == 2 and "do not belong together" in err

    code, err = run_main([*args, "--init-from", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such folder" in err

    monkeypatch.setattr(ckpt, "default_checkpoint", lambda: tmp_path / "no-checkpoint")   # a package without it
    code, err = run_main(args, capsys)
    assert code == 2 and "default model's training checkpoint is not in" in err
    assert not (tmp_path / "out").exists()


def test_an_output_holding_something_else_is_refused(tmp_path, tiny_checkpoint_dir, capsys):
    source = copy_modules(tmp_path / "src", OWN_CODE[:3])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_main(["--source", str(source), "--output", str(out), "--init-from", str(tiny_checkpoint_dir)],
                         capsys)
    assert code == 2 and "not empty" in err and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "finetune.json").write_text(json.dumps({"source": ["/elsewhere"], "init_from": str(tiny_checkpoint_dir),
                                                   "held_out": 0.1, "seed": 0}))
    code, err = run_main(["--source", str(source), "--output", str(out), "--init-from", str(tiny_checkpoint_dir)],
                         capsys)
    assert code == 2 and "other source" in err and "--overwrite" in err


def pretrain_args(corpus, output, **kw) -> list[str]:
    args = {"corpus": corpus, "output": output, "seq-length": 64, "batch-size": 4, "max-steps": 4,
            "warmup-steps": 1, "eval-steps": 2, "eval-batches": 2, "save-steps": 2, "report-to": "none",
            "dataloader-workers": 0, "mixed-precision": "no", "num-threads": 1, "learning-rate": 1e-2, **kw}
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def test_pretrain_init_from_trains_the_given_model(tiny_corpus_dir, tiny_checkpoint_dir, tmp_path):
    from safetensors.torch import load_file

    from trainer.pretrain import main as pretrain_main

    out = tmp_path / "run"
    assert pretrain_main(pretrain_args(tiny_corpus_dir, out, **{"init-from": tiny_checkpoint_dir})) == 0
    final = out / "final"
    assert json.loads((final / "config.json").read_text())["n_embd"] == 64   # the checkpoint's shape, not a preset's
    assert (final / "tokenizer.json").read_bytes() == (tiny_checkpoint_dir / "tokenizer.json").read_bytes()
    start, trained = load_file(tiny_checkpoint_dir / "model.safetensors"), load_file(final / "model.safetensors")
    assert any(not (start[k] == trained[k]).all() for k in start)   # trained weights, not the starting ones

    best = tmp_path / "best"
    assert pretrain_main(pretrain_args(tiny_corpus_dir, best, **{"init-from": tiny_checkpoint_dir}) + ["--keep-best"]) == 0
    evals = [json.loads(line) for line in (best / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert evals[0]["step"] == 0   # the starting point is evaluated, so the model kept is never worse
    kept = json.loads((best / "final" / "best.json").read_text())
    assert kept["eval_loss"] == min(r["eval_loss"] for r in evals)


def test_pretrain_init_from_refuses_another_tokenizer(tiny_corpus_dir, tiny_checkpoint_dir, tmp_path, capsys):
    from trainer.pretrain import main as pretrain_main

    other = tmp_path / "tok"
    other.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.json", other / "tokenizer.json")
    argv = pretrain_args(tiny_corpus_dir, tmp_path / "run", **{"init-from": tiny_checkpoint_dir, "tokenizer": other})
    assert pretrain_main(argv) == 2
    assert "not the tokenizer of --init-from" in capsys.readouterr().err
    assert pretrain_main(pretrain_args(tiny_corpus_dir, tmp_path / "run", **{"init-from": DEFAULT_MODEL_DIR})) == 2
    assert "exported ONNX folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_schedule_is_capped_at_max_epochs(tiny_corpus_dir, tiny_checkpoint_dir):
    """`--max-epochs` passes over the training split, in the packed windows pretraining reads:
    one pass of the training loader has as many windows as one epoch's steps at batch size 1."""
    from trainer.finetune import epoch_steps
    from trainer.pretraining.data import PackedDataset, shard_files

    n_positions = json.loads((tiny_checkpoint_dir / "config.json").read_text())["n_positions"]
    one, tokens = epoch_steps(tiny_corpus_dir, tiny_checkpoint_dir, batch_size=1, epochs=1.0)
    data = PackedDataset(shard_files(tiny_corpus_dir, "train"), tiny_checkpoint_dir / "tokenizer.json",
                         n_positions, 1, infinite=False)
    windows = sum(1 for _ in data)
    assert abs(one - windows) <= 1 and tokens > n_positions
    two, _ = epoch_steps(tiny_corpus_dir, tiny_checkpoint_dir, batch_size=4, epochs=2.0)
    assert two == -(-2 * tokens // (4 * n_positions))


@pytest.mark.parametrize("stage", ["finetune", "corpus", "quickstart"])
def test_an_unknown_option_is_a_usage_error(stage, capsys):
    """HfArgumentParser raises ValueError on an option it does not know; the stages answer as
    argparse does: the usage, the option named, exit status 2."""
    from trainer.cli import main

    try:
        rc = main([stage, *(["--output", "unused"] if stage == "corpus" else []), "--no-such-option", "1"])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "unrecognized arguments: --no-such-option 1" in err and "usage:" in err
