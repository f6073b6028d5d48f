"""Model presets, config files and `codeparrot init-model`."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from codeparrot_ls.prompt import END_OF_TEXT
from trainer.model import PRESETS, build_model, main, parameter_counts, training_flops_per_token


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))


def test_presets_follow_the_tokenizer(tok):
    model = build_model("test", tok)
    cfg = model.config
    assert cfg.vocab_size % 64 == 0 and cfg.vocab_size >= tok.get_vocab_size()
    eos = tok.token_to_id(END_OF_TEXT)
    assert cfg.eos_token_id == cfg.bos_token_id == cfg.pad_token_id == eos
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    assert {k: getattr(cfg, k) for k in PRESETS["test"]} == PRESETS["test"]


def test_tiny_preset_size_matches_the_measured_model(tok):
    # design.md: tiny at vocab 8192 has 5.39 M parameters; vocab 1024 here takes 7168 x 256 off.
    counts = parameter_counts(build_model("tiny", tok))
    assert counts["total"] == pytest.approx(5.39e6 - (8192 - 1024) * 256, rel=0.01)
    assert counts["non_embedding"] == counts["total"] - counts["embeddings"]


def test_small_preset_is_the_seeds_111m_model():
    from trainer.model import build_config

    cfg = build_config("small", 32768, 0)
    # 12 x (12 d^2 + 13 d) + V d + 1024 d + 2 d for GPT-2 small at vocab 32768 (weights tied)
    d = cfg.n_embd
    assert 12 * (12 * d * d + 13 * d) + 32768 * d + 1024 * d + 2 * d == pytest.approx(111e6, rel=0.01)


def test_config_file_overrides_the_preset(tok, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"n_layer": 3, "n_embd": 96, "n_head": 3, "architectures": ["x"]}))
    model = build_model("test", tok, tmp_path / "m.json")
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (3, 96, 3)
    (tmp_path / "m.yaml").write_text("n_layer: 1\nresid_pdrop: 0.0\n")
    assert build_model("test", tok, tmp_path / "m.yaml").config.n_layer == 1
    (tmp_path / "bad.json").write_text(json.dumps({"n_layers": 3}))
    with pytest.raises(ValueError, match="n_layers"):
        build_model("test", tok, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown model size"):
        build_model("huge", tok)


def test_flops_per_token_is_about_six_n(tok):
    model = build_model("tiny", tok)
    n = parameter_counts(model)["total"] - model.transformer.wpe.weight.numel()
    flops = training_flops_per_token(model.config, 512)
    # 6 N for the matmuls (biases and norms are < 1 % of N) + 12 L d T for attention
    assert flops == pytest.approx(6 * n + 12 * 4 * 256 * 512, rel=0.01)


def test_init_model_prints_counts_and_saves(tiny_tokenizer_dir, tmp_path, capsys):
    assert main(["--tokenizer", str(tiny_tokenizer_dir), "--model-size", "test", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "without embeddings" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert f"{parameter_counts(model)['total']:,}" in out
    assert (tmp_path / "tokenizer.json").is_file()


def test_init_model_usage_errors_exit_2(tiny_tokenizer_dir, tmp_path, capsys):
    assert main(["--tokenizer", str(tmp_path)]) == 2
    assert main(["--tokenizer", str(tiny_tokenizer_dir), "--model-size", "huge"]) == 2
    assert "unknown model size" in capsys.readouterr().err
