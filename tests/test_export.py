"""`codeparrot export`: the exported folder, its checks, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from codeparrot_ls import modelfiles as mf
from trainer.export import main as export_main


def test_export_folder_is_complete(tiny_onnx_dir, tiny_checkpoint_dir):
    import onnx

    for name in (mf.ONNX_FP32_FILE, mf.ONNX_INT8_FILE, mf.TOKENIZER_FILE, mf.CONFIG_FILE, mf.EXPORT_INFO_FILE):
        assert (tiny_onnx_dir / name).is_file(), name
    onnx.checker.check_model(str(tiny_onnx_dir / mf.ONNX_FP32_FILE))
    onnx.checker.check_model(str(tiny_onnx_dir / mf.ONNX_INT8_FILE))
    info = json.loads((tiny_onnx_dir / mf.EXPORT_INFO_FILE).read_text())
    config = json.loads((tiny_checkpoint_dir / mf.CONFIG_FILE).read_text())
    assert info["opset"] == 24
    meta = {m.key: m.value for m in onnx.load(str(tiny_onnx_dir / mf.ONNX_INT8_FILE), load_external_data=False).metadata_props}
    assert meta[mf.ONNX_GRAPH_KEY] == mf.ONNX_GRAPH_VERSION   # int8 quantization keeps the graph version
    assert info["n_layer"] == config["n_layer"] and info["n_positions"] == config["n_positions"]
    assert info["supports_fim"] is True
    assert info["special_token_ids"]["<|endoftext|>"] == info["eos_token_id"] == 0
    parity = info["parity"]
    assert parity["greedy_equal"] is True
    assert max(parity["prefill_max_abs_diff"], parity["decode_max_abs_diff"], parity["padded_max_abs_diff"]) < 1e-3
    q = info["int8"]
    assert q["size_mb"] < q["fp32_size_mb"]
    assert q["top1_agreement"] >= 0.9
    assert abs(q["loss_int8"] - q["loss_fp32"]) < 0.05


def test_graph_inputs_and_outputs_follow_the_contract(tiny_onnx_dir):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_onnx_dir / mf.ONNX_FP32_FILE), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    assert inputs[:4] == [mf.ONNX_INPUT_IDS, mf.ONNX_ATTENTION_MASK, mf.ONNX_POSITION_IDS, mf.ONNX_LOGITS_TO_KEEP]
    assert inputs[4:8] == [mf.past_key_name(0), mf.past_value_name(0), mf.past_key_name(1), mf.past_value_name(1)]
    assert outputs == [mf.ONNX_LOGITS, mf.present_key_name(0), mf.present_value_name(0),
                       mf.present_key_name(1), mf.present_value_name(1)]


def test_logits_to_keep_selects_last_positions(tiny_onnx_dir):
    """The prompt pass can ask for 1 position (serving) or all (perplexity); both agree."""
    from codeparrot_ls.engine import load_engine

    eng = load_engine(tiny_onnx_dir, engine="onnx", precision="fp32")
    ids = np.array([eng.tokenizer.encode("import os\nprint(os.getcwd())\n").ids], np.int64)
    all_logits, _ = eng.forward(ids, None, logits_to_keep=ids.shape[1])
    last, past = eng.forward(ids, None, logits_to_keep=1)
    assert all_logits.shape == (1, ids.shape[1], eng.info.vocab_size)
    assert last.shape == (1, 1, eng.info.vocab_size)
    np.testing.assert_allclose(last[0, 0], all_logits[0, -1], atol=1e-5)
    assert eng.past_length(past) == ids.shape[1]


def test_logits_to_keep_zero_fills_the_cache_only(tiny_onnx_dir):
    """A prompt chunk whose logits nobody needs asks for none; the cache it writes is the same."""
    from codeparrot_ls.engine.onnx_engine import KVGraph

    graph = KVGraph(tiny_onnx_dir / mf.ONNX_FP32_FILE, 128, threads=1)
    ids = np.arange(10, 50, dtype=np.int64)[None]
    none, past0 = graph.run(ids[:, :30], None, 0)
    one, past1 = graph.run(ids[:, :30], None, 1)
    assert none.shape == (1, 0, graph.vocab_size) and one.shape == (1, 1, graph.vocab_size)
    for a, b in zip(past0.buffer.arrays, past1.buffer.arrays):
        np.testing.assert_array_equal(a[:, :, :30], b[:, :, :30])
    after0, _ = graph.run(ids[:, 30:], past0, 1)
    after1, _ = graph.run(ids[:, 30:], past1, 1)
    np.testing.assert_array_equal(after0, after1)
    with pytest.raises(ValueError, match=">= 0"):
        graph.run(ids, None, -1)


def test_logits_of_earlier_passes_stay_as_returned(tiny_onnx_dir):
    """Small logits are written into a reused buffer; what a pass returned must not change."""
    from codeparrot_ls.engine.onnx_engine import KVGraph

    graph = KVGraph(tiny_onnx_dir / mf.ONNX_FP32_FILE, 128, threads=1)
    first, past = graph.run(np.array([[11, 12, 13]], np.int64), None)
    kept = first.copy()
    second, past = graph.run(np.array([[14]], np.int64), past)
    third, _ = graph.run(np.array([[15]], np.int64), past)
    np.testing.assert_array_equal(first, kept)
    assert first.shape == second.shape == third.shape and not np.array_equal(second, third)


def test_a_graph_of_an_older_export_is_refused(tiny_onnx_dir, tmp_path):
    """The engine reads the mask as row lengths: a graph from an older export (which masked
    padding itself) would silently compute something else, so it is refused by name."""
    import onnx

    from codeparrot_ls.engine import ModelLoadError, load_engine

    old = tmp_path / "old"
    shutil.copytree(tiny_onnx_dir, old)
    model = onnx.load(str(old / mf.ONNX_INT8_FILE))
    del model.metadata_props[:]
    onnx.save(model, str(old / mf.ONNX_INT8_FILE))
    with pytest.raises(ModelLoadError, match="older `codeparrot export`.*export the checkpoint again"):
        load_engine(old)


def test_cli_dispatch_and_optimize(tiny_checkpoint_dir, tmp_path):
    from trainer.cli import main as cli_main

    out = tmp_path / "opt"
    assert cli_main(["export", "--checkpoint", str(tiny_checkpoint_dir), "--output", str(out), "--optimize"]) == 0
    info = json.loads((out / mf.EXPORT_INFO_FILE).read_text())
    assert "verdict" in info["optimize"]
    assert not (out / "model.optimized.onnx").exists()
    assert not (out / mf.ONNX_INT8_FILE).exists()
    from codeparrot_ls.engine import Decoder, GenerationRequest, load_engine

    eng = load_engine(out)
    assert eng.info.extra["precision"] == "fp32"
    gen = Decoder(eng).generate(GenerationRequest(eng.tokenizer.encode("def f(x):\n").ids, max_new_tokens=5))[0]
    assert len(gen.token_ids) == 5


def test_parity_failure_exits_1_and_leaves_no_model(tiny_checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "strict"
    rc = export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(out), "--tolerance", "1e-12"])
    assert rc == 1
    assert "parity check failed" in capsys.readouterr().err
    assert not (out / mf.ONNX_FP32_FILE).exists() and not (out / (mf.ONNX_FP32_FILE + ".tmp")).exists()


def _broken_copy(src, dst, drop=(), config_edit=None):
    shutil.copytree(src, dst)
    for name in drop:
        for p in dst.glob(name):
            p.unlink()
    if config_edit:
        cfg = json.loads((dst / mf.CONFIG_FILE).read_text())
        cfg.update(config_edit)
        (dst / mf.CONFIG_FILE).write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case,expect", [
    ("missing", "does not exist"),
    ("no_config", "config.json"),
    ("no_weights", "no weights"),
    ("no_tokenizer", "tokenizer.json"),
    ("wrong_arch", "not supported"),
    ("bad_json", "not valid JSON"),
])
def test_bad_checkpoint_exits_2(tiny_checkpoint_dir, tmp_path, capsys, case, expect):
    ckpt = tmp_path / "ckpt"
    if case == "no_config":
        _broken_copy(tiny_checkpoint_dir, ckpt, drop=[mf.CONFIG_FILE])
    elif case == "no_weights":
        _broken_copy(tiny_checkpoint_dir, ckpt, drop=["*.safetensors"])
    elif case == "no_tokenizer":
        _broken_copy(tiny_checkpoint_dir, ckpt, drop=[mf.TOKENIZER_FILE])
    elif case == "wrong_arch":
        _broken_copy(tiny_checkpoint_dir, ckpt, config_edit={"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    elif case == "bad_json":
        _broken_copy(tiny_checkpoint_dir, ckpt)
        (ckpt / mf.CONFIG_FILE).write_text("{not json")
    rc = export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "codeparrot export: error:" in err and expect in err


@pytest.mark.parametrize("edit,expect", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"activation_function": "relu"}, "activation 'relu' is not supported"),
    ({"tie_word_embeddings": False}, "untied output embeddings"),
])
def test_gpt2_variants_the_graph_does_not_implement_exit_2(tiny_checkpoint_dir, tmp_path, capsys, edit, expect):
    ckpt = _broken_copy(tiny_checkpoint_dir, tmp_path / "ckpt", config_edit=edit)
    assert export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "codeparrot export: error:" in err and expect in err
    assert not (tmp_path / "out" / mf.ONNX_FP32_FILE).exists()


def test_exact_gelu_checkpoint_exports_at_parity(tiny_checkpoint_dir, tmp_path):
    """activation "gelu" (erf) maps to ONNX Runtime's Gelu, not the tanh FastGelu; the export's
    own parity check against PyTorch is what passes or fails here."""
    import torch
    from transformers import GPT2LMHeadModel

    ckpt = _broken_copy(tiny_checkpoint_dir, tmp_path / "ckpt", config_edit={"activation_function": "gelu"})
    model = GPT2LMHeadModel.from_pretrained(ckpt)
    with torch.no_grad():  # pre-activations of order 1, where erf and tanh GELU differ (~1e-3)
        for block in model.transformer.h:
            block.mlp.c_fc.weight.mul_(40.0)
            block.mlp.c_proj.weight.mul_(40.0)
    model.save_pretrained(ckpt)
    out = tmp_path / "out"
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out)]) == 0
    parity = json.loads((out / mf.EXPORT_INFO_FILE).read_text())["parity"]
    # Measured: 3e-7 with Gelu; 4e-5 if it were mapped to the tanh FastGelu.
    assert parity["greedy_equal"] and parity["prefill_max_abs_diff"] < 5e-6


def test_usage_error_exits_2(capsys):
    assert export_main(["--output", "x"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_an_opset_without_tensor_scatter_exits_2(tiny_checkpoint_dir, tmp_path, capsys):
    assert export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(tmp_path / "o"), "--opset", "23"]) == 2
    assert "at least 24" in capsys.readouterr().err


def test_reexport_without_quantize_removes_stale_int8(tiny_onnx_dir, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_onnx_dir, out)
    assert (out / mf.ONNX_INT8_FILE).is_file()
    assert export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(out)]) == 0
    assert not (out / mf.ONNX_INT8_FILE).exists()
    assert "int8" not in json.loads((out / mf.EXPORT_INFO_FILE).read_text())


def test_int8_only_folder_and_missing_eval_file(tiny_checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "int8only"
    assert export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(out), "--quantize", "int8",
                        "--no_keep_fp32"]) == 0
    assert (out / mf.ONNX_INT8_FILE).is_file() and not (out / mf.ONNX_FP32_FILE).exists()
    from codeparrot_ls.engine import load_engine

    assert load_engine(out).info.extra["precision"] == "int8"
    rc = export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(tmp_path / "x"),
                      "--eval_file", str(tmp_path / "missing.py")])
    assert rc == 2 and "eval_file" in capsys.readouterr().err
