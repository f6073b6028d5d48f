"""ONNX Runtime engine: the server's default, needs neither torch nor transformers.

One InferenceSession serves the prompt pass (empty past) and every decode step:
two sessions in one process fight over the cores. Spinning is disabled so an
idle server burns no CPU between requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine.base import Engine
from codeparrot_ls.engine.decoding import token_table
from codeparrot_ls.engine.loading import ModelLoadError, load_tokenizer, model_info

PRECISIONS = ("auto", "int8", "fp32")
# Inputs longer than this run in chunks (measured ~1.6x faster prefill at 1024 tokens
# on the tiny model; see docs/benchmarks.md).
DEFAULT_PREFILL_CHUNK = 256


def pick_onnx_file(model_dir: Path, precision: str = "auto") -> Path:
    """int8 when present (faster, agrees with fp32 on almost every token) unless precision says otherwise."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    int8, fp32 = model_dir / mf.ONNX_INT8_FILE, model_dir / mf.ONNX_FP32_FILE
    if precision == "int8" or (precision == "auto" and int8.is_file()):
        if not int8.is_file():
            raise ModelLoadError(f"{model_dir} has no {mf.ONNX_INT8_FILE} (export with --quantize int8)")
        return int8
    if not fp32.is_file():
        raise ModelLoadError(f"{model_dir} has no {mf.ONNX_FP32_FILE}" +
                             (f" (it has {mf.ONNX_INT8_FILE}: use precision int8)" if int8.is_file() else ""))
    return fp32


class OnnxEngine(Engine):
    def __init__(self, model_dir: str | Path, threads: int | None = None, precision: str = "auto",
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        path = pick_onnx_file(model_dir, precision)
        self._tokenizer = load_tokenizer(model_dir)
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {e}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        needed = [mf.ONNX_INPUT_IDS, mf.ONNX_ATTENTION_MASK, mf.ONNX_POSITION_IDS, mf.ONNX_LOGITS_TO_KEEP,
                  mf.past_key_name(0)]
        missing = [n for n in needed if n not in inputs]
        if missing:
            raise ModelLoadError(f"{path} is not a codeparrot KV-cache graph: inputs {missing} are missing "
                                 "(export it with `codeparrot export`)")
        self.n_layer = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        shape = inputs[mf.past_key_name(0)].shape  # [batch, heads, past, head_dim]
        self.n_head, self.head_dim = int(shape[1]), int(shape[3])
        self._past_names = [name for i in range(self.n_layer) for name in (mf.past_key_name(i), mf.past_value_name(i))]
        self._output_names = [mf.ONNX_LOGITS] + [
            name for i in range(self.n_layer) for name in (mf.present_key_name(i), mf.present_value_name(i))]
        self.prefill_chunk = prefill_chunk  # 0 = run any input in one pass
        self._empty: dict[int, list[np.ndarray]] = {}
        self._keep = {k: np.array(k, np.int64) for k in (1,)}
        self.info = model_info(model_dir, "onnx", self._tokenizer, file=path.name,
                               precision="int8" if path.name == mf.ONNX_INT8_FILE else "fp32",
                               threads=threads or 0)
        # Pay the one-off costs (token table, first-run allocations) now, not on the first request.
        token_table(self)
        self.forward(np.array([[self.info.eos_id]], np.int64), None)

    @property
    def tokenizer(self):
        return self._tokenizer

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        if batch not in self._empty:
            zero = np.zeros((batch, self.n_head, 0, self.head_dim), np.float32)
            self._empty[batch] = [zero] * (2 * self.n_layer)
        return self._empty[batch]

    def forward(self, input_ids, past, logits_to_keep=1, attention_mask=None, position_ids=None):
        batch, seq = input_ids.shape
        if past is None:
            past = self._empty_past(batch)
        past_len = past[0].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, past_len + seq), np.int64)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
        chunk = self.prefill_chunk
        if not chunk or seq <= chunk:
            return self._run(input_ids, past, logits_to_keep, attention_mask, position_ids)
        # A long input runs in chunks on top of the growing cache: the unfused attention's
        # score matrices stay small (and skip most of the masked upper triangle).
        first_kept = seq - logits_to_keep
        pieces = []
        for start in range(0, seq, chunk):
            end = min(seq, start + chunk)
            need = max(0, end - max(start, first_kept))
            logits, past = self._run(input_ids[:, start:end], past, max(need, 1),
                                     attention_mask[:, : past_len + end], position_ids[:, start:end])
            if need:
                pieces.append(logits[:, -need:])
        return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)), past

    def _run(self, input_ids, past, logits_to_keep, attention_mask, position_ids):
        keep = self._keep.get(logits_to_keep)
        if keep is None:
            keep = np.array(logits_to_keep, np.int64)
        feed = {mf.ONNX_INPUT_IDS: np.ascontiguousarray(input_ids, np.int64),
                mf.ONNX_ATTENTION_MASK: np.ascontiguousarray(attention_mask, np.int64),
                mf.ONNX_POSITION_IDS: np.ascontiguousarray(position_ids, np.int64),
                mf.ONNX_LOGITS_TO_KEEP: keep}
        feed.update(zip(self._past_names, past))
        outs = self.session.run(self._output_names, feed)
        return outs[0], outs[1:]

    def past_length(self, past) -> int:
        return 0 if past is None else int(past[0].shape[2])

    def truncate_past(self, past, length: int):
        return [np.ascontiguousarray(p[:, :, :length]) for p in past]

    def select_past(self, past, rows: Sequence[int]):
        idx = np.asarray(rows, np.intp)
        return [p[idx] for p in past]

    def close(self) -> None:
        self.session = None
        self._prefix_cache = None
