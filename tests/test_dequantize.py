"""A checkpoint rebuilt from an export's weights, and pretraining that starts from one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.export.dequantize import main as dequantize_main
from trainer.pretrain import main as pretrain_main
from test_pretrain import base_args, train_losses


def weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


@pytest.mark.parametrize("source", ["model.onnx", "model.int8.onnx"])
def test_weights_come_back_from_the_graph(tiny_checkpoint_dir, tiny_onnx_dir, tmp_path, source):
    export = tmp_path / "export"
    shutil.copytree(tiny_onnx_dir, export)
    (export / ("model.int8.onnx" if source == "model.onnx" else "model.onnx")).unlink()
    assert dequantize_main([str(export), str(tmp_path / "ckpt"), "--dtype", "float32"]) == 0
    original, rebuilt = weights(tiny_checkpoint_dir), weights(tmp_path / "ckpt")
    assert original.keys() == rebuilt.keys()
    for name, w in original.items():
        if source == "model.onnx":  # fp32: the same numbers
            assert torch.allclose(rebuilt[name], w, atol=1e-6), name
        else:  # int8: within one quantization step of the tensor's range
            step = (w.max() - w.min()) / 255
            assert (rebuilt[name] - w).abs().max() <= step * 1.01 + 1e-6, name
    assert (tmp_path / "ckpt" / "tokenizer.json").read_bytes() == (tiny_onnx_dir / "tokenizer.json").read_bytes()


def test_not_an_export_folder_is_a_clear_error(tiny_checkpoint_dir, tmp_path, capsys):
    assert dequantize_main([str(tiny_checkpoint_dir), str(tmp_path / "out")]) == 2
    assert "not an export folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_pretraining_starts_from_the_given_weights(tiny_checkpoint_dir, tiny_tokenizer_dir, tiny_corpus_dir, tmp_path):
    out = tmp_path / "run"
    # The tokenizer folder is the checkpoint itself, as when continuing a trained model.
    args = base_args(tiny_corpus_dir, tiny_checkpoint_dir, out, **{"max-steps": 2, "learning-rate": 1e-3,
                                                                     "warmup-steps": 0, "init-from": tiny_checkpoint_dir})
    assert pretrain_main(args) == 0
    start, end = weights(tiny_checkpoint_dir), weights(out / "final")
    moved = max((start[k] - end[k]).abs().max().item() for k in start)
    # Two small steps move every weight by a few thousandths at most: trained, and from these weights
    # (a fresh model differs by the init's scale, ~0.02), and the saved file is the trained one.
    assert 0 < moved < 0.01
    assert len(train_losses(out)) == 2


def test_init_from_what_cannot_start_a_run_is_refused(tiny_checkpoint_dir, tiny_onnx_dir, tiny_tokenizer_dir,
                                                      tiny_corpus_dir, tmp_path, capsys):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_checkpoint_dir, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["def"], vocab["class"] = vocab["class"], vocab["def"]  # same tokens, other ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    for init, message in ((tiny_onnx_dir, "ONNX folder cannot be trained"), (tmp_path / "missing", "no such folder"),
                          (other, "is not the tokenizer of --init-from")):
        args = base_args(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run", **{"init-from": init})
        assert pretrain_main(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
