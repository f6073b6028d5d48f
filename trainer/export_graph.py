"""The exported graph's wrapper and the checks run on it (helpers of trainer/export.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from codeparrot_ls import modelfiles as mf


class KVCacheWrapper(torch.nn.Module):
    """GPT-2 with flat past/present tensors and a `logits_to_keep` input.

    transformers 5 passes the KV cache as a `DynamicCache` object (`cache=`); ONNX
    needs plain tensors, so the cache is built from them inside the traced graph.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layer = model.config.n_layer

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, *past):
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layer)],
                             config=self.model.config)
        out = self.model.transformer(input_ids=input_ids, cache=cache, attention_mask=attention_mask,
                                     position_ids=position_ids, use_cache=True)
        hidden = out.last_hidden_state
        # Only the last `logits_to_keep` positions pay for the output layer.
        seq = hidden.shape[1]
        hidden = hidden.narrow(1, seq - logits_to_keep, logits_to_keep)
        logits = self.model.lm_head(hidden)
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (logits, *presents)


def input_names(n_layer: int) -> list[str]:
    names = [mf.ONNX_INPUT_IDS, mf.ONNX_ATTENTION_MASK, mf.ONNX_POSITION_IDS, mf.ONNX_LOGITS_TO_KEEP]
    for i in range(n_layer):
        names += [mf.past_key_name(i), mf.past_value_name(i)]
    return names


def output_names(n_layer: int) -> list[str]:
    names = [mf.ONNX_LOGITS]
    for i in range(n_layer):
        names += [mf.present_key_name(i), mf.present_value_name(i)]
    return names


def dynamic_axes(n_layer: int) -> dict:
    axes = {
        mf.ONNX_INPUT_IDS: {0: "batch", 1: "seq"},
        mf.ONNX_ATTENTION_MASK: {0: "batch", 1: "total"},
        mf.ONNX_POSITION_IDS: {0: "batch", 1: "seq"},
        mf.ONNX_LOGITS: {0: "batch", 1: "kept"},
    }
    for i in range(n_layer):
        axes[mf.past_key_name(i)] = axes[mf.past_value_name(i)] = {0: "batch", 2: "past"}
        axes[mf.present_key_name(i)] = axes[mf.present_value_name(i)] = {0: "batch", 2: "total"}
    return axes


def dummy_inputs(config, batch: int = 2, past: int = 3, seq: int = 5) -> tuple:
    """Trace with a non-empty past and seq > 1 so that no length is frozen into the graph."""
    head_dim = config.n_embd // config.n_head
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, -1).contiguous()
    keep = torch.tensor(2, dtype=torch.long)
    pasts = tuple(torch.randn(batch, config.n_head, past, head_dim) for _ in range(2 * config.n_layer))
    return (ids, mask, pos, keep, *pasts)


# ---------------------------------------------------------------- ONNX Runtime helpers

def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_forward(sess, ids: np.ndarray, past: list[np.ndarray] | None, n_layer: int, n_head: int, head_dim: int,
                mask: np.ndarray | None = None, pos: np.ndarray | None = None, keep: int = 1):
    batch, seq = ids.shape
    if past is None:
        past = [np.zeros((batch, n_head, 0, head_dim), np.float32)] * (2 * n_layer)
    past_len = past[0].shape[2]
    if mask is None:
        mask = np.ones((batch, past_len + seq), np.int64)
    if pos is None:
        pos = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)).copy()
    feed = {mf.ONNX_INPUT_IDS: ids.astype(np.int64), mf.ONNX_ATTENTION_MASK: mask, mf.ONNX_POSITION_IDS: pos,
            mf.ONNX_LOGITS_TO_KEEP: np.array(keep, np.int64)}
    for i in range(n_layer):
        feed[mf.past_key_name(i)], feed[mf.past_value_name(i)] = past[2 * i], past[2 * i + 1]
    outs = sess.run(None, feed)
    return outs[0], outs[1:]


def _dims(config) -> tuple[int, int, int]:
    return config.n_layer, config.n_head, config.n_embd // config.n_head


@torch.inference_mode()
def check_parity(model, onnx_path: Path, ids: list[int], threads: int = 0, greedy_steps: int = 16) -> dict:
    """Max |logits difference| ONNX vs PyTorch: full prefill, one decode step with past, a
    left-padded batch; and whether 16 greedy tokens are equal."""
    sess = ort_session(onnx_path, threads)
    n_layer, n_head, head_dim = _dims(model.config)
    x = np.array([ids], np.int64)
    t = torch.from_numpy(x)
    # Prefill with all positions' logits (what perplexity evaluation asks for).
    ref = model(input_ids=t[:, :-1], use_cache=True)
    got, past = ort_forward(sess, x[:, :-1], None, n_layer, n_head, head_dim, keep=x.shape[1] - 1)
    prefill = float(np.abs(got - ref.logits.numpy()).max())
    # One decode step on top of the past.
    ref2 = model(input_ids=t[:, -1:], cache=ref.cache, use_cache=True)
    got2, _ = ort_forward(sess, x[:, -1:], past, n_layer, n_head, head_dim)
    decode = float(np.abs(got2 - ref2.logits.numpy()[:, -1:]).max())
    # Left-padded batch (what batched evaluation sends): row 0 shorter, padded on the left.
    n = min(len(ids), 24)
    short = n // 2
    rows = np.zeros((2, n), np.int64)
    rows[0, n - short:] = ids[:short]
    rows[1] = ids[:n]
    mask = np.ones((2, n), np.int64)
    mask[0, : n - short] = 0
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    got3, _ = ort_forward(sess, rows, None, n_layer, n_head, head_dim, mask=mask, pos=pos, keep=1)
    ref_short = model(input_ids=torch.tensor([ids[:short]])).logits[:, -1:].numpy()
    ref_long = model(input_ids=torch.tensor([ids[:n]])).logits[:, -1:].numpy()
    padded = float(max(np.abs(got3[0:1] - ref_short).max(), np.abs(got3[1:2] - ref_long).max()))
    # Greedy tokens, each side with its own cache.
    prompt = x[:, : max(1, len(ids) // 2)]
    ref_tokens, got_tokens = [], []
    out = model(input_ids=torch.from_numpy(prompt), use_cache=True, logits_to_keep=1)
    logits, opast = ort_forward(sess, prompt, None, n_layer, n_head, head_dim)
    cache = out.cache
    for _ in range(greedy_steps):
        a, b = int(out.logits[0, -1].argmax()), int(logits[0, -1].argmax())
        ref_tokens.append(a)
        got_tokens.append(b)
        out = model(input_ids=torch.tensor([[a]]), cache=cache, use_cache=True)
        cache = out.cache
        logits, opast = ort_forward(sess, np.array([[b]], np.int64), opast, n_layer, n_head, head_dim)
    return {"prompt_tokens": len(ids), "prefill_max_abs_diff": prefill, "decode_max_abs_diff": decode,
            "padded_max_abs_diff": padded, "greedy_equal": ref_tokens == got_tokens, "greedy_steps": greedy_steps}


def _loss_and_top1(sess, config, ids: list[int]) -> tuple[float, np.ndarray]:
    n_layer, n_head, head_dim = _dims(config)
    x = np.array([ids], np.int64)
    logits, _ = ort_forward(sess, x[:, :-1], None, n_layer, n_head, head_dim, keep=x.shape[1] - 1)
    logits = logits[0].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    loss = float(np.mean(logz - logits[np.arange(len(ids) - 1), ids[1:]]))
    return loss, logits.argmax(-1)


def quantize_int8(fp32_path: Path, int8_path: Path, ids: list[int], threads: int = 0) -> dict:
    """Dynamic int8 quantization of the weights; agreement with fp32 on held-out text."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = int8_path.with_name(int8_path.name + ".tmp")
    # DefaultTensorType: the optimizer's fused com.microsoft nodes have no inferred output types.
    quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    tmp.replace(int8_path)
    config = _ConfigFromGraph(onnx.load(str(fp32_path), load_external_data=False))
    loss32, top32 = _loss_and_top1(ort_session(fp32_path, threads), config, ids)
    loss8, top8 = _loss_and_top1(ort_session(int8_path, threads), config, ids)
    return {"size_mb": int8_path.stat().st_size / 1e6, "fp32_size_mb": fp32_path.stat().st_size / 1e6,
            "top1_agreement": float(np.mean(top32 == top8)), "loss_fp32": loss32, "loss_int8": loss8,
            "eval_tokens": len(ids)}


class _ConfigFromGraph:
    """n_layer / n_head / n_embd read from the graph's past inputs (no torch config needed)."""

    def __init__(self, graph):
        pasts = [i for i in graph.graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
        dims = pasts[0].type.tensor_type.shape.dim
        self.n_layer = len(pasts)
        self.n_head = dims[1].dim_value
        self.n_embd = dims[1].dim_value * dims[3].dim_value


def _time_graph(path: Path, config, ids: list[int], threads: int, steps: int = 16, repeats: int = 3) -> float:
    sess = ort_session(path, threads)
    n_layer, n_head, head_dim = _dims(config)
    x = np.array([ids[: config.n_positions - steps]], np.int64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits, past = ort_forward(sess, x, None, n_layer, n_head, head_dim)
        for _ in range(steps):
            nxt = np.array([[int(logits[0, -1].argmax())]], np.int64)
            logits, past = ort_forward(sess, nxt, past, n_layer, n_head, head_dim)
        best = min(best, time.perf_counter() - t0)
    return best


def try_optimize(fp32_path: Path, model, ids: list[int], tolerance: float, threads: int = 0) -> dict:
    """Run ONNX Runtime's GPT-2 fusions; keep the result only if it is faster and still at parity."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model.config
    cand = fp32_path.with_name("model.optimized.onnx")
    try:
        opt = optimize_model(str(fp32_path), model_type="gpt2", num_heads=cfg.n_head, hidden_size=cfg.n_embd,
                             opt_level=1)
        opt.save_model_to_file(str(cand))
    except Exception as e:  # noqa: BLE001 - an optimizer failure only means "not optimized"
        return {"verdict": f"optimizer failed ({type(e).__name__}: {e}); kept the plain graph", "kept": False}
    try:
        parity = check_parity(model, cand, ids, threads=threads, greedy_steps=8)
        worst = max(parity["prefill_max_abs_diff"], parity["decode_max_abs_diff"], parity["padded_max_abs_diff"])
        base_s = _time_graph(fp32_path, cfg, ids, threads)
        opt_s = _time_graph(cand, cfg, ids, threads)
    except Exception as e:  # noqa: BLE001
        cand.unlink(missing_ok=True)
        return {"verdict": f"optimized graph failed to run ({type(e).__name__}: {e}); kept the plain graph", "kept": False}
    keep = worst <= tolerance and parity["greedy_equal"] and opt_s < base_s * 0.97
    result = {"kept": keep, "plain_s": base_s, "optimized_s": opt_s, "optimized_max_abs_diff": worst,
              "verdict": f"{'kept' if keep else 'dropped'}: optimized {opt_s * 1e3:.1f} ms vs plain {base_s * 1e3:.1f} ms "
                         f"(prompt + 16 steps), max |diff| {worst:.1e}"}
    if keep:
        cand.replace(fp32_path)
    else:
        cand.unlink(missing_ok=True)
    return result
