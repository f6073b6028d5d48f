"""What every evaluation task shares: opening a model folder through the server's
engine, and tokenizing source text the way training did."""

from __future__ import annotations

from pathlib import Path

from codeparrot_ls.modelfiles import TOKENIZER_FILE, has_onnx_model, has_torch_checkpoint
from codeparrot_ls.prompt import END_OF_TEXT

ENGINES = ("auto", "onnx", "torch")


class ModelFolderError(ValueError):
    """The model folder is missing or is neither a checkpoint nor an ONNX export."""


def check_model_folder(model_dir: str | Path, engine: str = "auto") -> Path:
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelFolderError(f"model folder {d} does not exist")
    if not (d / TOKENIZER_FILE).is_file():
        raise ModelFolderError(f"{d} has no {TOKENIZER_FILE}: not a model folder")
    onnx, torch_ = has_onnx_model(d), has_torch_checkpoint(d)
    if engine == "onnx" and not onnx:
        raise ModelFolderError(f"{d} holds no ONNX model (run `codeparrot export` first)")
    if engine == "torch" and not torch_:
        raise ModelFolderError(f"{d} holds no Hugging Face checkpoint (config.json + weights)")
    if not (onnx or torch_):
        raise ModelFolderError(f"{d} holds neither an ONNX model nor a Hugging Face checkpoint")
    return d


def open_engine(model_dir: str | Path, engine: str = "auto", precision: str = "auto", threads: int | None = None):
    """The same `Engine` the language server would use for this folder.

    `auto` picks ONNX when the folder has an exported model, else PyTorch; for ONNX,
    precision `auto` picks int8 when the folder has it.
    """
    if engine not in ENGINES:
        raise ModelFolderError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    d = check_model_folder(model_dir, engine)
    from codeparrot_ls.engine import ModelLoadError, load_engine

    try:
        return load_engine(d, engine=engine, threads=threads, precision=precision)
    except ModelLoadError as e:
        raise ModelFolderError(str(e)) from e


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of source text; text that spells a special token stays plain text (as in training)."""
    tokenizer.encode_special_tokens = True
    return tokenizer.encode(text, add_special_tokens=False).ids


def document_start(engine) -> list[int]:
    """Training puts END_OF_TEXT between documents, so a file's first token follows it
    (perplexity scores whole files; generation prompts come from codeparrot_ls.prompt_builder)."""
    return [engine.info.special_ids.get(END_OF_TEXT, engine.info.eos_id)]
