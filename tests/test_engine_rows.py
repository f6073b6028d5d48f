"""The ONNX engine's prompts of several rows, padded rows, caller positions and logits counts:
each row runs alone into its own cache row (the graph masks no padding), checked against the
row alone and against the torch engine."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from codeparrot_ls.engine.onnx_engine import run_passes
from conftest import prompt_ids


def test_padded_prompts_run_row_by_row(onnx_fp32):
    """Each left-padded row is its own prompt: its logits and cache equal the row alone, its
    tokens at the start of its cache row; logits asked for beyond a short row are zeros."""
    ids = prompt_ids(onnx_fp32, 40)
    rows = np.array([[0] * 30 + ids[:10], ids[:40]], np.int64)
    mask = (np.arange(40) >= np.array([[30], [0]])).astype(np.int64)
    logits, past = onnx_fp32.forward(rows, None, 12, attention_mask=mask)
    short, short_past = onnx_fp32.forward(np.array([ids[:10]], np.int64), None, 10)
    long, _ = onnx_fp32.forward(np.array([ids[:40]], np.int64), None, 12)
    assert logits.shape == (2, 12, onnx_fp32.info.vocab_size) and past.length == 40
    assert not logits[0, :2].any() and np.abs(logits[0, 2:] - short[0]).max() < 1e-4
    assert np.abs(logits[1] - long[0]).max() < 1e-4
    assert all(np.abs(a[0, :, :10] - b[0, :, :10]).max() < 1e-5
               for a, b in zip(past.buffer.arrays, short_past.buffer.arrays))


@pytest.mark.parametrize("keep", [1, 5, 30])
def test_a_batch_of_prompts_keeps_any_number_of_rows(onnx_fp32, keep):
    """Unpadded rows too: the last layer attends for the kept rows of one row at a time (the
    engine's passes and the export checks' passes, without prefill chunks, plan them alike)."""
    ids = np.array([prompt_ids(onnx_fp32, 30), prompt_ids(onnx_fp32, 30, offset=40)], np.int64)
    for run in (onnx_fp32.forward, partial(run_passes, onnx_fp32.graph)):
        logits, past = run(ids, None, keep)
        assert logits.shape == (2, keep, onnx_fp32.info.vocab_size) and past.length == 30
        for b in range(2):
            alone, _ = onnx_fp32.forward(ids[b:b + 1], None, keep)
            assert np.abs(logits[b] - alone[0]).max() < 1e-4


def test_caller_positions_reach_each_row(onnx_fp32, torch_engine):
    """Row-by-row prompts take the positions the caller gives (as the torch engine does)."""
    ids = np.array([prompt_ids(onnx_fp32, 12), prompt_ids(onnx_fp32, 12, offset=20)], np.int64)
    pos = np.array([np.arange(12), np.arange(7, 19)], np.int64)
    got, _ = onnx_fp32.forward(ids, None, 3, position_ids=pos)
    want, _ = torch_engine.forward(ids, None, 3, position_ids=pos)
    assert np.abs(got - want).max() < 1e-4


def test_one_padded_row_longer_than_a_chunk(onnx_fp32, torch_engine):
    """A single row padded on the left by more than a prefill chunk runs unpadded, chunked."""
    real = prompt_ids(onnx_fp32, 40)
    chunk, onnx_fp32.prefill_chunk = onnx_fp32.prefill_chunk, 64
    try:
        ids = np.array([[0] * 94 + real], np.int64)
        mask = np.array([[0] * 94 + [1] * len(real)], np.int64)
        got, past = onnx_fp32.forward(ids, None, 2, attention_mask=mask)
        want, _ = onnx_fp32.forward(np.array([real], np.int64), None, 2)
    finally:
        onnx_fp32.prefill_chunk = chunk
    assert got.shape == (1, 2, onnx_fp32.info.vocab_size) and np.abs(got - want).max() < 1e-4
    step_mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    nxt, _ = onnx_fp32.forward(np.array([[real[5]]], np.int64), past, 1, attention_mask=step_mask,
                               position_ids=np.array([[len(real)]], np.int64))
    ref, _ = torch_engine.forward(np.array([real + [real[5]]], np.int64), None, 1)
    assert np.abs(nxt - ref).max() < 1e-4


@pytest.mark.parametrize("keep", [6, 9, 50])
def test_more_logits_than_positions_gives_every_position(onnx_fp32, keep):
    ids = np.array([prompt_ids(onnx_fp32, 5)], np.int64)
    for run in (onnx_fp32.forward, onnx_fp32.graph.run, partial(run_passes, onnx_fp32.graph)):
        got, _ = run(ids, None, keep)
        every, _ = onnx_fp32.forward(ids, None, 5)
        assert got.shape == (1, 5, onnx_fp32.info.vocab_size) and np.abs(got - every).max() < 1e-5


def test_padding_other_than_a_prompts_left_is_an_error(onnx_fp32):
    ids = np.array([prompt_ids(onnx_fp32, 12)] * 2, np.int64)
    holes = np.ones((2, 12), np.int64)
    holes[0, 5] = 0
    with pytest.raises(ValueError, match="padding only on its left"):
        onnx_fp32.forward(ids, None, 1, attention_mask=holes)
    empty = np.ones((2, 12), np.int64)
    empty[1] = 0
    with pytest.raises(ValueError, match="at least one token"):
        onnx_fp32.forward(ids, None, 1, attention_mask=empty)
    _, past = onnx_fp32.forward(ids[:1], None, 1)
    padded_after_past = np.ones((1, 24), np.int64)
    padded_after_past[0, 12] = 0
    with pytest.raises(ValueError, match="first pass"):
        run_passes(onnx_fp32.graph, ids[:1], past, 1, attention_mask=padded_after_past)


def test_a_graph_pass_is_one_pass(onnx_fp32):
    """What needs several passes is refused by `KVGraph.run` (the planner, `run_passes`, splits it)."""
    ids = np.array([prompt_ids(onnx_fp32, 12)] * 2, np.int64)
    with pytest.raises(ValueError, match="run_passes"):
        onnx_fp32.graph.run(ids, None, 1)
    padded = np.ones((1, 12), np.int64)
    padded[0, 0] = 0
    with pytest.raises(ValueError, match="run_passes"):
        onnx_fp32.graph.run(ids[:1], None, 1, attention_mask=padded)
    logits, past = onnx_fp32.graph.run(ids[:, :1], None, 1)    # one token in each row: one pass
    assert logits.shape == (2, 1, onnx_fp32.info.vocab_size) and past.length == 1
