"""The model shipped in the package: `codeparrot-ls` with no model argument serves it."""

from __future__ import annotations

import json

import pytest

from codeparrot_ls import modelfiles
from codeparrot_ls.status import DEFAULT_MODEL_DIR, default_model_dir


def test_the_package_ships_a_complete_small_model():
    assert default_model_dir() == DEFAULT_MODEL_DIR
    info = json.loads((DEFAULT_MODEL_DIR / modelfiles.EXPORT_INFO_FILE).read_text())
    assert info["supports_fim"]
    model = DEFAULT_MODEL_DIR / modelfiles.ONNX_INT8_FILE
    assert model.is_file() and model.stat().st_size < 25e6


@pytest.mark.slow
def test_server_without_a_model_argument_serves_the_default_model(monkeypatch):
    from trainer.quickstart import demo

    monkeypatch.delenv("CODEPARROT_LS_MODEL", raising=False)
    result = demo(None)
    assert result["model"] == str(DEFAULT_MODEL_DIR)
    assert result["suggestion"].strip()  # a trained model completes the demo file


def test_the_default_model_is_prompted_the_way_it_scored_best():
    """Its export.json records whether FIM or left-to-right prompts scored better in line
    completion, and the server's Completer follows it unless the user sets `fim`; where no
    code follows the cursor it prompts left to right either way."""
    from codeparrot_ls.completion import Completer
    from codeparrot_ls.engine import load_engine
    from codeparrot_ls.settings import CompletionSettings

    info = json.loads((DEFAULT_MODEL_DIR / modelfiles.EXPORT_INFO_FILE).read_text())
    scores = info["serving"]["edit_similarity"]
    assert info["serving"]["fim"] is (scores["fim"] >= scores["no_fim"])
    engine = load_engine(DEFAULT_MODEL_DIR)
    assert engine.info.fim_default is info["serving"]["fim"]
    builder = Completer(engine).builder
    text = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
    offset = text.index("return ") + len("return ")
    expected = "spm" if info["serving"]["fim"] else "l2r"
    assert builder.build(text, offset, CompletionSettings()).layout == expected
    assert builder.build(text, offset, CompletionSettings(fim=True)).layout == "spm"
    end = text[:offset]   # the end of a file
    assert builder.build(end, len(end), CompletionSettings()).layout == "l2r"
