"""PyTorch engine: serves a Hugging Face checkpoint folder directly (torch and transformers needed).

Same decoding as the ONNX engine (codeparrot_ls/engine/decoding.py); the past is a
tuple of (key, value) tensors per layer, wrapped in a fresh `DynamicCache` for each
call, so an old past stays valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine.base import Engine
from codeparrot_ls.engine.loading import ModelLoadError, load_tokenizer, model_info, read_json


def cache_keyword(model) -> str:
    """The name a model's forward takes the KV cache by: `cache` in newer transformers 5
    releases, `past_key_values` before (both are in the supported range)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under either name (see `cache_keyword`)."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


class TorchEngine(Engine):
    def __init__(self, model_dir: str | Path, threads: int | None = None, precision: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM

        model_dir = Path(model_dir)
        if precision not in ("auto", "fp32"):
            raise ModelLoadError(f"the torch engine runs fp32 only (precision {precision!r} asked)")
        problem = mf.folder_problem(model_dir, "torch")
        if problem:
            raise ModelLoadError(problem)
        config = read_json(model_dir / mf.CONFIG_FILE)
        if config.get("model_type") != "gpt2":
            raise ModelLoadError(f"{model_dir}: model type {config.get('model_type')!r} is not supported (GPT-2 only)")
        self._tokenizer = load_tokenizer(model_dir)
        if threads:
            torch.set_num_threads(int(threads))
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - any load failure is a bad folder
            raise ModelLoadError(f"transformers cannot load {model_dir}: {e}") from e
        self._torch = torch
        self._cache_keyword = cache_keyword(self.model)
        self.info = model_info(model_dir, "torch", self._tokenizer, precision="fp32", threads=threads or 0)

    @property
    def tokenizer(self):
        return self._tokenizer

    def forward(self, input_ids, past, logits_to_keep=1, attention_mask=None, position_ids=None):
        from transformers import DynamicCache

        torch = self._torch
        with torch.inference_mode():
            cache = DynamicCache(ddp_cache_data=past, config=self.model.config) if past else None
            out = self.model(
                input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, np.int64)),
                **{self._cache_keyword: cache},
                attention_mask=None if attention_mask is None else torch.from_numpy(np.ascontiguousarray(attention_mask, np.int64)),
                position_ids=None if position_ids is None else torch.from_numpy(np.ascontiguousarray(position_ids, np.int64)),
                use_cache=True,
                logits_to_keep=int(logits_to_keep),
            )
            new_past = tuple((layer.keys, layer.values) for layer in output_cache(out).layers)
            return out.logits.float().numpy(), new_past

    def past_length(self, past) -> int:
        return 0 if not past else int(past[0][0].shape[2])

    def truncate_past(self, past, length: int):
        return tuple((k[:, :, :length].contiguous(), v[:, :, :length].contiguous()) for k, v in past)

    def select_past(self, past, rows: Sequence[int]):
        idx = self._torch.as_tensor(list(rows), dtype=self._torch.long)
        return tuple((k.index_select(0, idx), v.index_select(0, idx)) for k, v in past)

    def close(self) -> None:
        self.model = None
