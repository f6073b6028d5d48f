"""What every evaluation task shares: opening a model folder through the server's
engine, and tokenizing source text the way training did."""

from __future__ import annotations

from pathlib import Path

from codeparrot_ls.prompt import END_OF_TEXT


class ModelFolderError(ValueError):
    """The model folder is missing or is neither a checkpoint nor an ONNX export."""


def open_engine(model_dir: str | Path, engine: str = "auto", precision: str = "auto", threads: int | None = None):
    """The same `Engine` the language server would use for this folder.

    `auto` picks ONNX when the folder has an exported model, else PyTorch; for ONNX,
    precision `auto` picks int8 when the folder has it.
    """
    from codeparrot_ls.engine import ModelLoadError, load_engine

    try:
        return load_engine(model_dir, engine=engine, threads=threads, precision=precision)
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
