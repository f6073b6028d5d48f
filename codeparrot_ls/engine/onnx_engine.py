"""ONNX Runtime engine: the server's default, needs neither torch nor transformers.

One InferenceSession serves the prompt pass (empty past) and every decode step:
two sessions in one process fight over the cores. Its threads spin between the
graph's nodes (on 2 cores: a 1,024-token prefill 32.5 vs 39.2 ms, a decode step 0.54
vs 0.81 ms without spinning) and go to sleep a few milliseconds after a request
(measured: 0.03 CPU-seconds over 2 idle seconds).

The KV cache lives in one preallocated buffer per layer (`n_positions` long), bound
as both the graph's past and present through an IOBinding: each pass writes its new
positions in place. A past is a view of the first `length` positions of a buffer;
truncating one (KV prefix reuse) costs nothing; selecting rows copies them.

`KVGraph.run` is one bound pass. `run_passes` plans every other input one way, rows ->
chunks -> passes: prompts of several rows or with padding run row by row, long inputs in
prefill chunks, several rows of several tokens after a past a token at a time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine.base import Engine, prefill_ends
from codeparrot_ls.engine.denormals import flush_denormals_on_this_thread
from codeparrot_ls.engine.loading import ModelLoadError, load_tokenizer, model_info, model_sizes, read_json

PRECISIONS = ("auto", "int8", "fp32")
# Default threads: the CPUs this process may use, at most this many (a decode step of a small model
# is too short to share among many spinning threads).
MAX_DEFAULT_THREADS = 4
# Inputs longer than this run in chunks on top of the growing cache: the causal attention
# then skips most of the masked upper triangle. 1,024 tokens: 19.9 ms in chunks of 256 vs 21.6
# in 128s and 20.1 in 512s (docs/benchmarks.md).
DEFAULT_PREFILL_CHUNK = 256
# Logits of at most this many rows are written into a reused buffer (see KVGraph.run).
SMALL_LOGITS_ROWS = 16


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


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


class KVBuffer:
    """Key/value storage [batch, heads, capacity, head_dim] for every layer, as numpy arrays
    and the OrtValues that wrap the same memory."""

    def __init__(self, arrays: list[np.ndarray]):
        import onnxruntime as ort

        self.arrays = arrays     # (OrtValues wrap numpy memory, views of a row included: no copy)
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        self.binding = None      # the IOBinding with these buffers bound (KVGraph._binding), made on first use

    @property
    def batch(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2]

    def row(self, b: int) -> KVBuffer:
        """Row b alone, the same memory."""
        return KVBuffer([a[b:b + 1] for a in self.arrays])


@dataclass(frozen=True)
class OnnxPast:
    """The first `length` positions of `buffer`."""

    buffer: KVBuffer
    length: int


class KVGraph:
    """An exported graph in an InferenceSession, run with its KV buffers bound in place.

    `run` is one pass; `run_passes` plans any other input into such passes, for the engine and
    for `codeparrot export`'s checks (which have no model folder yet). One pass at a time:
    buffers, their bindings and the logits buffers are reused across passes.
    """

    def __init__(self, path: Path, capacity: int, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # Denormals flushed to zero on ONNX Runtime's threads (and on run()'s caller: denormals.py).
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = int(threads) if threads else default_threads()
        try:
            # ONNX Runtime's SkipLayerNormalization (Add + LayerNorm fused) is slower than the two
            # nodes on prompt chunks (docs/benchmarks.md).
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=["SkipLayerNormFusion"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {e}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        needed = [mf.ONNX_INPUT_IDS, mf.ONNX_ATTENTION_MASK, mf.ONNX_POSITION_IDS, mf.ONNX_LOGITS_TO_KEEP,
                  mf.past_key_name(0)]
        missing = [n for n in needed if n not in inputs]
        if missing:
            raise ModelLoadError(f"{path} is not a codeparrot KV-cache graph: inputs {missing} are missing "
                                 "(export it with `codeparrot export`)")
        shape = inputs[mf.past_key_name(0)].shape  # [batch, heads, capacity, head_dim]
        version = self.session.get_modelmeta().custom_metadata_map.get(mf.ONNX_GRAPH_KEY)
        if version != mf.ONNX_GRAPH_VERSION:
            raise ModelLoadError(f"{path} was written by an older `codeparrot export` (graph version {version or 1}, "
                                 f"this server runs {mf.ONNX_GRAPH_VERSION}); export the checkpoint again")
        self.n_layer = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        self.n_head, self.head_dim = int(shape[1]), int(shape[3])
        self.capacity = int(capacity)
        self._past_names = [name for i in range(self.n_layer) for name in (mf.past_key_name(i), mf.past_value_name(i))]
        self._present_names = [name for i in range(self.n_layer)
                               for name in (mf.present_key_name(i), mf.present_value_name(i))]
        self._keep = {1: np.array(1, np.int64)}
        self.vocab_size = int(self.session.get_outputs()[0].shape[2])
        self._wrap = ort.OrtValue.ortvalue_from_numpy
        self._logits: dict[tuple[int, int], tuple[np.ndarray, object]] = {}   # output buffers by shape

    def new_buffer(self, batch: int) -> KVBuffer:
        # np.empty: pages are touched only as positions are written.
        shape = (batch, self.n_head, self.capacity, self.head_dim)
        return KVBuffer([np.empty(shape, np.float32) for _ in range(2 * self.n_layer)])

    def run(self, input_ids, past: OnnxPast | None, logits_to_keep: int = 1, attention_mask=None,
            position_ids=None):
        """Exactly one pass; `attention_mask` and `position_ids` default to all ones and the
        positions after the past. The graph reads a row's length from its mask (its tokens fill
        the start of its cache row), and GroupQueryAttention takes several new tokens for one row
        at a time: an input that needs more than one pass is refused (`run_passes` plans those)."""
        flush_denormals_on_this_thread()
        batch, seq = input_ids.shape
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        logits_to_keep = min(logits_to_keep, seq)   # (the graph would read a larger count from the end)
        if needs_rows(input_ids, attention_mask):
            raise ValueError("several new tokens in several rows or after padding take one pass per row: "
                             "run them through run_passes")
        if past is None:
            past = OnnxPast(self.new_buffer(batch), 0)
        total = past.length + seq
        if total > past.buffer.capacity:
            raise ValueError(f"{total} positions do not fit the model's {past.buffer.capacity}")
        if attention_mask is None:
            attention_mask = np.ones((batch, total), np.int64)
        if position_ids is None:   # (np.full for a decode step: broadcast_to costs ~15 us)
            position_ids = (np.full((batch, 1), past.length, np.int64) if seq == 1 else
                            np.broadcast_to(np.arange(past.length, total, dtype=np.int64), (batch, seq)))
        keep = self._keep.get(logits_to_keep)
        if keep is None:
            keep = np.array(logits_to_keep, np.int64)
        io = self._binding(past.buffer)
        io.bind_cpu_input(mf.ONNX_INPUT_IDS, np.ascontiguousarray(input_ids, np.int64))
        io.bind_cpu_input(mf.ONNX_ATTENTION_MASK, np.ascontiguousarray(attention_mask, np.int64))
        io.bind_cpu_input(mf.ONNX_POSITION_IDS, np.ascontiguousarray(position_ids, np.int64))
        io.bind_cpu_input(mf.ONNX_LOGITS_TO_KEEP, keep)
        # Decode-sized logits go into a buffer kept per shape and callers get a copy (they may keep
        # earlier logits): binding fresh memory every pass cost ~20 us more than the copy. Larger
        # ones (a perplexity pass keeps every position) get fresh memory, not kept.
        shape = (batch, logits_to_keep)
        small = shape[0] * shape[1] <= SMALL_LOGITS_ROWS
        out = self._logits.get(shape) if small else None
        if out is None:
            buf = np.empty((*shape, self.vocab_size), np.float32)
            out = (buf, self._wrap(buf))
            if small:
                self._logits[shape] = out
        io.bind_ortvalue_output(mf.ONNX_LOGITS, out[1])
        self.session.run_with_iobinding(io)
        return (out[0].copy() if small else out[0]), OnnxPast(past.buffer, total)

    def _binding(self, buffer: KVBuffer):
        """The buffer's IOBinding, its past and present bound once for every later pass."""
        if buffer.binding is None:   # buffers come from this graph's new_buffer()
            buffer.binding = self.session.io_binding()
            for name, value in zip(self._past_names, buffer.values):
                buffer.binding.bind_ortvalue_input(name, value)
            for name, value in zip(self._present_names, buffer.values):
                buffer.binding.bind_ortvalue_output(name, value)
        return buffer.binding

    def select(self, past: OnnxPast, rows: Sequence[int]) -> OnnxPast:
        idx = np.asarray(rows, np.intp)
        buffer = self.new_buffer(len(idx))
        for src, dst in zip(past.buffer.arrays, buffer.arrays):
            dst[:, :, : past.length] = src[idx, :, : past.length]
        return OnnxPast(buffer, past.length)


class OnnxEngine(Engine):
    def __init__(self, model_dir: str | Path, threads: int | None = None, precision: str = "auto",
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        model_dir = Path(model_dir)
        path = pick_onnx_file(model_dir, precision)
        self._tokenizer = load_tokenizer(model_dir)
        info = model_info(model_dir, "onnx", self._tokenizer, file=path.name,
                          precision="int8" if path.name == mf.ONNX_INT8_FILE else "fp32",
                          threads=threads or default_threads())
        self.graph = KVGraph(path, info.n_positions, threads)
        self.prefill_chunk = prefill_chunk  # 0 = run any input in one pass
        self.info = info
        check_graph(self.graph, info, model_sizes(model_dir), path)
        # Pay the first run's one-off allocations now, not on the first request.
        self.forward(np.array([[self.info.eos_id]], np.int64), None)

    @property
    def tokenizer(self):
        return self._tokenizer

    def forward(self, input_ids, past, logits_to_keep=1, attention_mask=None, position_ids=None):
        return run_passes(self.graph, input_ids, past, logits_to_keep, attention_mask, position_ids,
                          self.prefill_chunk)

    def past_length(self, past) -> int:
        return 0 if past is None else past.length

    def truncate_past(self, past, length: int):
        return OnnxPast(past.buffer, min(length, past.length))

    def select_past(self, past, rows: Sequence[int]):
        return self.graph.select(past, rows)

    def close(self) -> None:
        self.graph = None


def check_graph(graph: KVGraph, info, sizes: dict[str, int], path: Path) -> None:
    """The folder's stated sizes agree with the graph, and the graph serves the last of the
    `n_positions` it is said to hold (a position table too short fails in its Gather at load,
    not in the first long prompt). Raises ModelLoadError."""
    stated = {"n_layer": info.n_layer, **sizes}
    found = {"n_layer": graph.n_layer, "n_head": graph.n_head, "head_dim": graph.head_dim,
             "vocab_size": graph.vocab_size}
    for name, value in found.items():
        if name in stated and stated[name] != value:
            raise ModelLoadError(f"{path.parent}: {name} is {stated[name]} but the graph {path.name} has {value}: "
                                 "the folder's files are from different models (export it again)")
    inputs = _stated_inputs(path.parent)
    if inputs is not None and set(inputs) != {i.name for i in graph.session.get_inputs()}:
        raise ModelLoadError(f"{path.parent}: {mf.EXPORT_INFO_FILE} lists inputs that are not the graph's "
                             f"({path.name}): export it again")
    last = info.n_positions - 1
    try:
        graph.run(np.array([[info.eos_id]], np.int64), None, 1, np.ones((1, 1), np.int64),
                  np.array([[last]], np.int64))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"{path.parent}: n_positions is {info.n_positions} but the graph {path.name} cannot "
                             f"run position {last} (its position table is shorter): {_first_line(e)}") from e


def _stated_inputs(model_dir: Path) -> list[str] | None:
    path = model_dir / mf.EXPORT_INFO_FILE
    return read_json(path).get("inputs") if path.is_file() else None


def _first_line(e: Exception) -> str:
    return str(e).strip().split("\n", 1)[0][:200]


def needs_rows(input_ids, attention_mask) -> bool:
    """Whether a pass must run row by row: several new tokens in several rows, or with padding
    (GroupQueryAttention takes several new tokens for one row at a time; the graph masks no padding)."""
    batch, seq = input_ids.shape
    return seq > 1 and (batch > 1 or (attention_mask is not None and not attention_mask[:, -seq:].all()))


def _columns(attention_mask, position_ids, past_len: int, start: int, end: int):
    """The mask and positions for input columns [start, end) after `past_len` (None stays None)."""
    return (None if attention_mask is None else attention_mask[:, : past_len + end],
            None if position_ids is None else position_ids[:, start:end])


def run_passes(graph: KVGraph, input_ids, past: OnnxPast | None, logits_to_keep: int = 1, attention_mask=None,
               position_ids=None, prefill_chunk: int = 0):
    """Any input of `Engine.forward` as the single passes `graph.run` takes, planned one way:
    rows (prompts of several rows or with padding, each alone into its own cache row), then
    chunks (inputs longer than `prefill_chunk`, 0 = none, on top of the growing cache), then
    one bound pass each. Several rows of several new tokens after a past run a token at a time."""
    if logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
    batch, seq = input_ids.shape
    if needs_rows(input_ids, attention_mask) and (past is None or batch == 1):
        return _rows(graph, input_ids, past, logits_to_keep, attention_mask, position_ids, prefill_chunk)
    if batch > 1 and seq > 1:
        # GroupQueryAttention runs several new tokens after a past only for one row.
        return _token_by_token(graph, input_ids, past, logits_to_keep, attention_mask, position_ids)
    return _chunks(graph, input_ids, past, logits_to_keep, attention_mask, position_ids, prefill_chunk)


def _rows(graph: KVGraph, input_ids, past: OnnxPast | None, logits_to_keep: int, attention_mask, position_ids,
          prefill_chunk: int):
    """Prompts (padded on the left, if at all), each run alone (in chunks) into its own row of one
    cache: row b's tokens then sit at positions [0, length_b) and later passes (the same mask with
    ones appended) give each row its own length. Positions default to 0, 1, ... from each row's
    first token; logits of padding positions are zeros."""
    batch, seq = input_ids.shape
    if past is not None and past.length:
        raise ValueError("several new tokens after a past run one row at a time, and padding is only "
                         "supported in a batch's first pass (prompts padded on the left)")
    real = (np.ones(input_ids.shape, bool) if attention_mask is None else attention_mask[:, -seq:].astype(bool))
    if any(not r.any() or not r[int(np.argmax(r)):].all() for r in real):
        raise ValueError("attention_mask: each row needs at least one token, and padding only on its left")
    buffer = graph.new_buffer(batch)
    logits = np.zeros((batch, min(logits_to_keep, seq), graph.vocab_size), np.float32)
    for b in range(batch):
        ids = input_ids[b:b + 1, real[b]]
        positions = None if position_ids is None else position_ids[b:b + 1, real[b]]
        got, _ = _chunks(graph, ids, OnnxPast(buffer.row(b), 0), min(logits_to_keep, ids.shape[1]), None, positions,
                         prefill_chunk)
        logits[b, logits.shape[1] - got.shape[1]:] = got[0]
    return logits, OnnxPast(buffer, seq)


def _chunks(graph: KVGraph, input_ids, past: OnnxPast | None, logits_to_keep: int, attention_mask, position_ids,
            prefill_chunk: int):
    """One row's input in passes of `prefill_chunk` tokens (0: one pass; `prefill_ends` places
    the last); only the passes that hold kept positions ask for logits."""
    batch, seq = input_ids.shape
    ends = prefill_ends(seq, prefill_chunk)
    if len(ends) == 1:
        return graph.run(input_ids, past, logits_to_keep, attention_mask, position_ids)
    past_len, first_kept = 0 if past is None else past.length, seq - logits_to_keep
    pieces = []
    for start, end in itertools.pairwise([0, *ends]):
        need = max(0, end - max(start, first_kept))   # 0: the chunk only fills the cache
        logits, past = graph.run(input_ids[:, start:end], past, need,
                                 *_columns(attention_mask, position_ids, past_len, start, end))
        if need:
            pieces.append(logits)
    if not pieces:
        return np.zeros((batch, 0, graph.vocab_size), np.float32), past
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)), past


def _token_by_token(graph: KVGraph, input_ids, past: OnnxPast, logits_to_keep: int, attention_mask, position_ids):
    seq, past_len = input_ids.shape[1], past.length
    pieces = []
    for t in range(seq):
        logits, past = graph.run(input_ids[:, t:t + 1], past, 1,
                                 *_columns(attention_mask, position_ids, past_len, t, t + 1))
        if t >= seq - logits_to_keep:
            pieces.append(logits)
    return np.concatenate(pieces, axis=1), past
