"""File names and the ONNX graph's input/output names: the contract between
`codeparrot export` (which writes a model folder) and the server's engines
(which read it). Keep both sides on these constants. Also the engine names and
the one check of a folder's files (`folder_problem`) that the server, the engines
and the evaluation share."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
EXPORT_INFO_FILE = "export.json"
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
SAFETENSORS_FILE = "model.safetensors"
TORCH_BIN_FILE = "pytorch_model.bin"

# What `--engine` accepts: "auto" serves ONNX when the folder has an exported model, else torch.
ENGINES = ("auto", "onnx", "torch")

# One graph serves the prompt (empty past, length 0) and every decode step.
ONNX_INPUT_IDS = "input_ids"                # int64 [batch, seq]
ONNX_ATTENTION_MASK = "attention_mask"      # int64 [batch, past + seq]: a row's sum is its length
ONNX_POSITION_IDS = "position_ids"          # int64 [batch, seq]
ONNX_LOGITS_TO_KEEP = "logits_to_keep"      # int64 scalar: logits only for the last k positions (0: none)
# The graph's metadata names how it reads these inputs; the engine runs only this version.
ONNX_GRAPH_KEY = "codeparrot_kv_graph"
ONNX_GRAPH_VERSION = "2"
ONNX_LOGITS = "logits"                      # float32 [batch, k, vocab]


def past_key_name(layer: int) -> str:       # float32 [batch, heads, past, head_dim]
    return f"past_key_values.{layer}.key"


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:    # float32 [batch, heads, past + seq, head_dim]
    return f"present.{layer}.key"


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"


def has_onnx_model(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return (d / ONNX_FP32_FILE).is_file() or (d / ONNX_INT8_FILE).is_file()


def has_torch_checkpoint(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return (d / CONFIG_FILE).is_file() and any(d.glob("*.safetensors")) or (d / TORCH_BIN_FILE).is_file()


def folder_problem(model_dir: str | Path, engine: str = "auto") -> str | None:
    """Why `model_dir` cannot be served by `engine`, judged by the files it holds (nothing is
    loaded), or None: the folder, its tokenizer, and the model files the engine needs."""
    d = Path(model_dir)
    if engine not in ENGINES:
        return f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})"
    if not d.exists():
        return f"model folder {d} does not exist"
    if not d.is_dir():
        return f"{d} is not a folder"
    if not (d / TOKENIZER_FILE).is_file():
        return f"{d} has no {TOKENIZER_FILE}; is it a model folder written by `codeparrot export`?"
    onnx, torch = has_onnx_model(d), has_torch_checkpoint(d)
    if engine == "onnx" and not onnx:
        return f"{d} has no ONNX model ({ONNX_INT8_FILE} or {ONNX_FP32_FILE}; run `codeparrot export`)"
    if engine == "torch" and not torch:
        return f"{d} has no PyTorch checkpoint for the torch engine ({CONFIG_FILE} + *.safetensors)"
    if not (onnx or torch):
        return (f"{d} holds no model: neither an ONNX model ({ONNX_INT8_FILE}, {ONNX_FP32_FILE}, from "
                f"`codeparrot export`) nor a PyTorch checkpoint ({CONFIG_FILE} + *.safetensors)")
    return None
