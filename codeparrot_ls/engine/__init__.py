"""Inference engines: ONNX Runtime (default, no torch needed) and PyTorch.

`load_engine(model_dir)` picks ONNX when the folder holds model.onnx / model.int8.onnx
and the torch engine for a Hugging Face checkpoint folder; `Decoder(engine)` decodes on it
(and keeps the token table and the KV prefix cache). Nothing here imports torch or
transformers until the torch engine is actually asked for.
"""

from __future__ import annotations

from pathlib import Path

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine.base import Engine, Generation, GenerationRequest, ModelInfo
from codeparrot_ls.engine.decoding import Decoder
from codeparrot_ls.engine.loading import ModelLoadError

__all__ = ["Decoder", "Engine", "Generation", "GenerationRequest", "ModelInfo", "ModelLoadError", "load_engine"]


def load_engine(model_dir: str | Path, engine: str = "auto", threads: int | None = None,
                precision: str = "auto") -> Engine:
    """An engine for `model_dir`; raises ModelLoadError with a clear message when it cannot.

    engine: "auto" (ONNX if the folder has an ONNX model, else torch), "onnx" or "torch".
    precision: "auto" (int8 if present), "int8" or "fp32" (ONNX); the torch engine is fp32.
    threads: intra-op threads (None: torch's default; ONNX: the usable CPUs, at most 4).
    """
    d = Path(model_dir)
    problem = mf.folder_problem(d, engine)
    if problem:
        raise ModelLoadError(problem)
    if engine == "auto":
        engine = "onnx" if mf.has_onnx_model(d) else "torch"
    if engine == "onnx":
        from codeparrot_ls.engine.onnx_engine import OnnxEngine

        return OnnxEngine(d, threads=threads, precision=precision)
    from codeparrot_ls.engine.torch_engine import TorchEngine

    try:
        return TorchEngine(d, threads=threads, precision=precision)
    except ImportError as e:
        raise ModelLoadError(f"the torch engine needs torch and transformers (pip install 'codeparrot-ls[train]'): {e}") from e
