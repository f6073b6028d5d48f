"""Inference engines: ONNX Runtime (default, no torch needed) and PyTorch."""

from codeparrot_ls.engine.base import Engine, Generation, GenerationRequest, ModelInfo

__all__ = ["Engine", "Generation", "GenerationRequest", "ModelInfo"]
