"""Checks run on an exported graph (helpers of trainer/export/__init__.py): parity with PyTorch,
int8 quantization and its agreement with fp32, and the optional offline optimization.

They run the graph the way the server does, through codeparrot_ls's `KVGraph` and its pass planner
(`run_passes`, without prefill chunks).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from codeparrot_ls.engine.onnx_engine import KVGraph, run_passes
from codeparrot_ls.engine.torch_engine import cache_keyword, output_cache


@torch.inference_mode()
def check_parity(model, onnx_path: Path, ids: list[int], threads: int = 0, greedy_steps: int = 16) -> dict:
    """Max |logits difference| ONNX vs PyTorch: full prefill, one decode step with past, a
    left-padded batch (prefill and a decode step); and whether `greedy_steps` greedy tokens are equal."""
    graph = KVGraph(onnx_path, model.config.n_positions, threads)
    x = np.array([ids], np.int64)
    t = torch.from_numpy(x)
    cache_arg = cache_keyword(model)
    # Prefill with all positions' logits (what perplexity evaluation asks for).
    ref = model(input_ids=t[:, :-1], use_cache=True)
    got, past = run_passes(graph, x[:, :-1], None, x.shape[1] - 1)
    prefill = float(np.abs(got - ref.logits.numpy()).max())
    # One decode step on top of the past.
    ref2 = model(input_ids=t[:, -1:], **{cache_arg: output_cache(ref)}, use_cache=True)
    got2, _ = run_passes(graph, x[:, -1:], past)
    decode = float(np.abs(got2 - ref2.logits.numpy()[:, -1:]).max())
    # Left-padded batch (what batched evaluation sends): row 0 shorter, padded on the left,
    # then one decode step for both rows.
    n = min(len(ids) - 1, 24)
    short = n // 2
    rows = np.zeros((2, n), np.int64)
    rows[0, n - short:] = ids[:short]
    rows[1] = ids[:n]
    mask = np.ones((2, n), np.int64)
    mask[0, : n - short] = 0
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    got3, bpast = run_passes(graph, rows, None, 1, mask, pos)
    nxt = np.array([[ids[short]], [ids[n]]], np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    got4, _ = run_passes(graph, nxt, bpast, 1, mask2, pos[:, -1:] + 1)
    ref_short = model(input_ids=torch.tensor([ids[: short + 1]])).logits[:, -2:].numpy()
    ref_long = model(input_ids=torch.tensor([ids[: n + 1]])).logits[:, -2:].numpy()
    padded = float(max(np.abs(got3[0, -1] - ref_short[0, 0]).max(), np.abs(got3[1, -1] - ref_long[0, 0]).max(),
                       np.abs(got4[0, -1] - ref_short[0, 1]).max(), np.abs(got4[1, -1] - ref_long[0, 1]).max()))
    # Greedy tokens, each side with its own cache.
    prompt = x[:, : max(1, len(ids) // 2)]
    ref_tokens, got_tokens = [], []
    out = model(input_ids=torch.from_numpy(prompt), use_cache=True, logits_to_keep=1)
    logits, opast = run_passes(graph, prompt, None)
    cache = output_cache(out)
    for _ in range(greedy_steps):
        a, b = int(out.logits[0, -1].argmax()), int(logits[0, -1].argmax())
        ref_tokens.append(a)
        got_tokens.append(b)
        out = model(input_ids=torch.tensor([[a]]), **{cache_arg: cache}, use_cache=True)
        cache = output_cache(out)
        logits, opast = run_passes(graph, np.array([[b]], np.int64), opast)
    return {"prompt_tokens": len(ids), "prefill_max_abs_diff": prefill, "decode_max_abs_diff": decode,
            "padded_max_abs_diff": padded, "greedy_equal": ref_tokens == got_tokens, "greedy_steps": greedy_steps}


def _loss_and_top1(graph: KVGraph, ids: list[int]) -> tuple[float, np.ndarray]:
    x = np.array([ids], np.int64)
    logits, _ = run_passes(graph, x[:, :-1], None, x.shape[1] - 1)
    logits = logits[0].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    loss = float(np.mean(logz - logits[np.arange(len(ids) - 1), ids[1:]]))
    return loss, logits.argmax(-1)


def quantize_int8(fp32_path: Path, int8_path: Path, ids: list[int], capacity: int, threads: int = 0) -> dict:
    """Dynamic int8 quantization of the weights; agreement with fp32 on held-out text."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = int8_path.with_name(int8_path.name + ".tmp")
    # DefaultTensorType: com.microsoft nodes have no inferred output types.
    quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    tmp.replace(int8_path)
    loss32, top32 = _loss_and_top1(KVGraph(fp32_path, capacity, threads), ids)
    loss8, top8 = _loss_and_top1(KVGraph(int8_path, capacity, threads), ids)
    return {"size_mb": int8_path.stat().st_size / 1e6, "fp32_size_mb": fp32_path.stat().st_size / 1e6,
            "top1_agreement": float(np.mean(top32 == top8)), "loss_fp32": loss32, "loss_int8": loss8,
            "eval_tokens": len(ids)}


def _time_graph(path: Path, capacity: int, ids: list[int], threads: int, steps: int = 16, repeats: int = 3) -> float:
    graph = KVGraph(path, capacity, threads)
    x = np.array([ids[: capacity - steps]], np.int64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits, past = run_passes(graph, x, None)
        for _ in range(steps):
            nxt = np.array([[int(logits[0, -1].argmax())]], np.int64)
            logits, past = run_passes(graph, nxt, past)
        best = min(best, time.perf_counter() - t0)
    return best


def try_optimize(fp32_path: Path, model, ids: list[int], tolerance: float, threads: int = 0) -> dict:
    """Save ONNX Runtime's own graph optimizations (constant folding, fusions) into the file;
    keep the result only if it is faster and still at parity."""
    import onnxruntime as ort

    capacity = model.config.n_positions
    cand = fp32_path.with_name("model.optimized.onnx")
    try:
        so = ort.SessionOptions()
        # EXTENDED, not ALL: the saved file must not depend on this CPU's instruction set.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(cand)
        ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - an optimizer failure only means "not optimized"
        cand.unlink(missing_ok=True)
        return {"verdict": f"optimizer failed ({type(e).__name__}: {e}); kept the plain graph", "kept": False}
    try:
        parity = check_parity(model, cand, ids, threads=threads, greedy_steps=8)
        worst = max(parity["prefill_max_abs_diff"], parity["decode_max_abs_diff"], parity["padded_max_abs_diff"])
        base_s = _time_graph(fp32_path, capacity, ids, threads)
        opt_s = _time_graph(cand, capacity, ids, threads)
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
