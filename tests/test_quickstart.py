"""The quickstart chain end to end on a small corpus, and a re-run that skips every stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE_MODULES, STDLIB

from codeparrot_ls.status import DEFAULT_MODEL_DIR


@pytest.mark.slow
def test_quickstart_runs_every_stage_then_skips_them(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for i, module in enumerate(SAMPLE_MODULES):
        shutil.copy(STDLIB / module, source / f"m{i}.py")
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "trainer.cli", "quickstart", "--from_scratch", "--output", str(out),
           "--source", str(source), "--minutes", "0.1", "--vocab_size", "1024", "--model_size", "test", "--eval_positions", "8"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("corpus/stats.json", "tokenizer/report.json", "train/final/config.json",
                  "model/export.json", "model/model.int8.onnx", "eval/perplexity.json", "eval/line-completion.json"):
        assert (out / stage).is_file(), stage
    assert "the server suggested" in first.stdout or "with no suggestion" in first.stdout
    assert f"codeparrot-ls --model {out / 'model'}" in first.stdout
    ppl = json.loads((out / "eval" / "perplexity.json").read_text())
    assert "onnx" in json.dumps(ppl)  # the exported model is what gets evaluated
    lc = json.loads((out / "eval" / "line-completion.json").read_text())["results"]
    serving = json.loads((out / "model" / "export.json").read_text())["serving"]
    assert serving["fim"] is (lc["fim_spm"]["edit_similarity"] >= lc["no_fim"]["edit_similarity"])
    assert "serving prompt:" in first.stdout

    second = subprocess.run(cmd + ["--demo", "false"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already done, skipped") == 5


@pytest.mark.slow
def test_quickstart_fine_tunes_by_default_and_serves_the_result(tmp_path, tiny_checkpoint_dir):
    source = tmp_path / "src"
    source.mkdir()
    for module in ("bisect.py", "colorsys.py", "calendar.py", "gzip.py", "sched.py"):
        shutil.copy(STDLIB / module, source / module)
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "trainer.cli", "quickstart", "--output", str(out), "--source", str(source),
           "--init_from", str(tiny_checkpoint_dir), "--minutes", "0.2", "--eval_positions", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "codeparrot finetune" in done.stdout and "held-out perplexity" in done.stdout
    assert "the server suggested" in done.stdout or "with no suggestion" in done.stdout
    assert (out / "comparison.md").is_file() and "serving" in json.loads((out / "model" / "export.json").read_text())
    assert not (out / "tokenizer").exists()   # no tokenizer of its own: the shipped model's is kept


def test_the_default_fine_tuning_source_is_this_project():
    from trainer.quickstart import own_source

    folders = [Path(f) for f in own_source()]
    assert [f.name for f in folders] == ["codeparrot_ls", "trainer"] and all((f / "__init__.py").is_file() for f in folders)


def test_quickstart_rejects_a_bad_duration(capsys):
    from trainer.quickstart import main

    with pytest.raises(SystemExit) as exc:
        main(["--minutes", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize("fim_es, plain_es, expected", [(30.0, 25.0, True), (20.0, 25.0, False), (25.0, 25.0, True)])
def test_the_fim_choice_follows_line_completion(tmp_path, fim_es, plain_es, expected):
    from codeparrot_ls.engine.loading import model_info
    from codeparrot_ls.engine.onnx_engine import load_tokenizer
    from trainer.quickstart import record_fim_choice

    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.json", model / "tokenizer.json")
    (model / "export.json").write_text(json.dumps({"n_positions": 64, "n_layer": 1, "vocab_size": 16384}))
    results = tmp_path / "lc.json"
    results.write_text(json.dumps({"results": {"no_fim": {"edit_similarity": plain_es},
                                               "fim_spm": {"edit_similarity": fim_es}}}))
    summary = record_fim_choice(model, results)
    assert ("fill-in-the-middle" if expected else "left to right") in summary
    info = json.loads((model / "export.json").read_text())
    assert info["serving"]["fim"] is expected and info["n_positions"] == 64   # the rest is kept
    assert model_info(model, "onnx", load_tokenizer(model)).fim_default is expected
    info["serving"]["fim"] = None   # written by hand as null: FIM, as without the key
    (model / "export.json").write_text(json.dumps(info))
    assert model_info(model, "onnx", load_tokenizer(model)).fim_default is True
    results.write_text(json.dumps({"results": {"no_fim": {"edit_similarity": plain_es}}}))
    assert record_fim_choice(model, results) == ""   # no FIM run: nothing to decide
