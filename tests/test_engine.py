"""Engines and the shared decode loop, on the tiny real model (torch checkpoint and its ONNX export)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine import Decoder, GenerationRequest, ModelLoadError, load_engine
from codeparrot_ls.engine.base import prefill_ends
from conftest import PROMPT_SOURCE, fresh, prompt_ids

ROOT = Path(__file__).resolve().parents[1]


def test_load_engine_picks_by_folder(onnx_int8, onnx_fp32, torch_engine, tiny_onnx_dir):
    assert onnx_int8.info.engine == "onnx" and onnx_int8.info.extra["precision"] == "int8"
    assert onnx_fp32.info.extra["precision"] == "fp32"
    assert torch_engine.info.engine == "torch"
    for eng in (onnx_int8, torch_engine):
        assert eng.info.n_positions == 256 and eng.info.n_layer == 2 and eng.info.vocab_size == 1024
        assert eng.info.eos_id == 0 and eng.info.supports_fim
        assert eng.info.special_ids["<fim_middle>"] == 2


def test_forward_parity_torch_vs_onnx_prefill_and_decode(onnx_fp32, torch_engine):
    ids = np.array([prompt_ids(onnx_fp32, 40)], np.int64)
    a, pa = onnx_fp32.forward(ids[:, :30], None, logits_to_keep=30)
    b, pb = torch_engine.forward(ids[:, :30], None, logits_to_keep=30)
    assert np.abs(a - b).max() < 1e-4
    for t in range(30, 40):  # decode steps on top of each engine's own past
        a, pa = onnx_fp32.forward(ids[:, t:t + 1], pa)
        b, pb = torch_engine.forward(ids[:, t:t + 1], pb)
        assert np.abs(a - b).max() < 1e-4
    assert onnx_fp32.past_length(pa) == torch_engine.past_length(pb) == 40


def test_greedy_tokens_equal_between_engines(onnx_fp32, torch_engine):
    req = GenerationRequest(prompt_ids(onnx_fp32, 100), max_new_tokens=32)
    a = fresh(onnx_fp32).generate(req)[0]
    b = fresh(torch_engine).generate(req)[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 32
    assert a.text == b.text and a.finish_reason == "length"


def test_int8_runs_and_agrees_on_most_tokens(onnx_fp32, onnx_int8):
    ids = np.array([prompt_ids(onnx_fp32, 200)], np.int64)
    a, _ = onnx_fp32.forward(ids, None, logits_to_keep=200)
    b, _ = onnx_int8.forward(ids, None, logits_to_keep=200)
    agreement = np.mean(a[0].argmax(-1) == b[0].argmax(-1))
    assert agreement >= 0.9, agreement
    gen = fresh(onnx_int8).generate(GenerationRequest(prompt_ids(onnx_int8, 50), max_new_tokens=16))[0]
    assert len(gen.token_ids) == 16


@pytest.mark.parametrize("engine_name", ["onnx_fp32", "torch_engine"])
def test_kv_prefix_reuse_matches_cold_run(request, engine_name):
    eng = request.getfixturevalue(engine_name)
    base = prompt_ids(eng, 120)
    dec = fresh(eng)
    first = dec.generate(GenerationRequest(base[:80], max_new_tokens=8))[0]
    assert first.reused_tokens == 0
    # A prompt that shares 70 tokens with the previous one: only its tail runs.
    edited = base[:70] + base[90:120]
    warm = dec.generate(GenerationRequest(edited, max_new_tokens=12))[0]
    cold = fresh(eng).generate(GenerationRequest(edited, max_new_tokens=12))[0]
    assert warm.reused_tokens == 70 and cold.reused_tokens == 0
    assert warm.token_ids == cold.token_ids
    # Typing along the suggestion: the prompt now extends the previous prompt + generation.
    along = edited + cold.token_ids[:5]
    warm2 = dec.generate(GenerationRequest(along, max_new_tokens=6))[0]
    cold2 = fresh(eng).generate(GenerationRequest(along, max_new_tokens=6))[0]
    assert warm2.reused_tokens == len(along) - 1
    assert warm2.token_ids == cold2.token_ids


def test_stop_string_is_cut_and_reported(onnx_fp32):
    ids = prompt_ids(onnx_fp32, 60)
    dec = fresh(onnx_fp32)
    full = dec.generate(GenerationRequest(ids, max_new_tokens=40))[0]
    assert len(full.text) > 12
    stop = full.text[8:12]
    cut = full.text.index(stop)
    got = dec.generate(GenerationRequest(ids, max_new_tokens=40, stop=["\x00never", stop]))[0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[:cut]
    assert got.token_ids == full.token_ids[: len(got.token_ids)] and len(got.token_ids) < 40


def test_max_tokens_deadline_and_cancel(onnx_fp32):
    ids = prompt_ids(onnx_fp32, 30)
    dec = fresh(onnx_fp32)
    gen = dec.generate(GenerationRequest(ids, max_new_tokens=7))[0]
    assert gen.finish_reason == "length" and len(gen.token_ids) == 7
    late = dec.generate(GenerationRequest(ids, max_new_tokens=7, deadline=time.monotonic() - 1))[0]
    assert late.finish_reason == "time" and late.token_ids == []
    calls = []

    def cancelled_after_two_tokens():
        calls.append(1)
        return len(calls) > 3  # 1 check before the prompt pass, then 1 before each token

    # One token per pass here (lookup drafts off): the flag is checked before each pass.
    gen = dec.generate(GenerationRequest(ids, max_new_tokens=20, is_cancelled=cancelled_after_two_tokens,
                                         lookup_tokens=0))[0]
    assert gen.finish_reason == "cancelled" and len(gen.token_ids) == 2
    calls.clear()
    gen = dec.generate(GenerationRequest(ids, max_new_tokens=20, is_cancelled=cancelled_after_two_tokens))[0]
    assert gen.finish_reason == "cancelled" and 2 <= len(gen.token_ids) <= 2 * (1 + 4)


def test_eos_ends_generation(tiny_checkpoint_dir, tmp_path):
    """A copy of the tiny model whose final layer always points at end-of-text."""
    import torch
    from transformers import GPT2LMHeadModel

    ckpt = tmp_path / "eos_model"
    shutil.copytree(tiny_checkpoint_dir, ckpt)
    model = GPT2LMHeadModel.from_pretrained(ckpt)
    with torch.no_grad():
        model.transformer.wte.weight[0] *= 4
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[0] * 50)
    model.save_pretrained(ckpt)
    dec = Decoder(load_engine(ckpt, engine="torch"))
    gen = dec.generate(GenerationRequest(dec.tokenizer.encode("x = 1\n").ids, max_new_tokens=10))[0]
    assert gen.finish_reason == "eos" and gen.token_ids == [] and gen.text == ""
    # Token healing never lets EOS satisfy a required prefix.
    healed = dec.generate(GenerationRequest(dec.tokenizer.encode("x = 1\n").ids, max_new_tokens=10,
                                            required_prefix="ret"))[0]
    assert healed.text.startswith("ret") and healed.finish_reason == "eos"


@pytest.mark.parametrize("required", ["re", "return", "    self.", " (", "é"])
def test_required_prefix_constrains_first_tokens(onnx_fp32, required):
    ids = prompt_ids(onnx_fp32, 40)
    dec = fresh(onnx_fp32)
    greedy = dec.generate(GenerationRequest(ids, max_new_tokens=12, required_prefix=required))[0]
    assert greedy.text.startswith(required), greedy.text
    sampled = dec.generate(GenerationRequest(ids, max_new_tokens=12, required_prefix=required,
                                             temperature=1.0, num_samples=3, seed=3))
    assert all(s.text.startswith(required) for s in sampled)


def test_sampling_is_seeded_and_batched(onnx_fp32):
    ids = prompt_ids(onnx_fp32, 40)
    req = GenerationRequest(ids, max_new_tokens=10, temperature=0.9, top_p=0.95, num_samples=4, seed=7)
    dec = fresh(onnx_fp32)
    dec.generate(GenerationRequest(ids, max_new_tokens=3))    # a, c and greedy reuse this prompt's cache
    a = dec.generate(req)
    b = fresh(onnx_fp32).generate(req)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len(a) == 4 and len({tuple(g.token_ids) for g in a}) > 1
    c = dec.generate(GenerationRequest(ids, max_new_tokens=10, temperature=0.9, num_samples=4, seed=8))
    assert [g.token_ids for g in c] != [g.token_ids for g in a]
    greedy = dec.generate(GenerationRequest(ids, max_new_tokens=5, num_samples=3))
    assert len(greedy) == 3 and all(g.token_ids == greedy[0].token_ids for g in greedy)


def test_context_guard(onnx_fp32):
    long_ids = onnx_fp32.tokenizer.encode(PROMPT_SOURCE).ids[:300]
    n_pos = onnx_fp32.info.n_positions
    dec = fresh(onnx_fp32)
    gen = dec.generate(GenerationRequest(long_ids, max_new_tokens=10))[0]
    assert gen.truncated_tokens == 300 - (n_pos - 10) and gen.prompt_tokens == n_pos - 10
    assert gen.finish_reason == "length" and len(gen.token_ids) == 10
    # More new tokens than half the window: half the window of prompt, then "context".
    gen = dec.generate(GenerationRequest(long_ids, max_new_tokens=200))[0]
    assert gen.prompt_tokens == n_pos // 2 and gen.finish_reason == "context"
    assert gen.prompt_tokens + len(gen.token_ids) == n_pos


@pytest.mark.parametrize("engine_name", ["onnx_fp32", "torch_engine"])
def test_generate_batch_matches_single_generation(request, engine_name):
    eng = request.getfixturevalue(engine_name)
    src = eng.tokenizer.encode(PROMPT_SOURCE).ids
    reqs = [GenerationRequest(src[i * 50: i * 50 + n], max_new_tokens=m, stop=["\n\n"] if i == 1 else ())
            for i, (n, m) in enumerate([(20, 8), (45, 12), (7, 5)])]
    batched = fresh(eng).generate_batch(reqs)
    for req, got in zip(reqs, batched):
        single = fresh(eng).generate(req)[0]
        assert got.token_ids == single.token_ids and got.text == single.text
        assert got.finish_reason == single.finish_reason


def test_bad_model_folders(tmp_path, tiny_checkpoint_dir, tiny_onnx_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=mf.TOKENIZER_FILE):
        load_engine(tmp_path / "empty")
    shutil.copy(tiny_onnx_dir / mf.TOKENIZER_FILE, tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_engine(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="unknown engine"):
        load_engine(tiny_onnx_dir, engine="tensorrt")
    with pytest.raises(ModelLoadError, match="model.onnx"):
        load_engine(tiny_checkpoint_dir, engine="onnx")
    with pytest.raises(ModelLoadError, match="checkpoint"):
        load_engine(tiny_onnx_dir, engine="torch")
    only_fp32 = tmp_path / "fp32"
    shutil.copytree(tiny_onnx_dir, only_fp32)
    (only_fp32 / mf.ONNX_INT8_FILE).unlink()
    with pytest.raises(ModelLoadError, match="quantize int8"):
        load_engine(only_fp32, precision="int8")
    garbage = tmp_path / "garbage"
    shutil.copytree(only_fp32, garbage)
    (garbage / mf.ONNX_FP32_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_engine(garbage)
    no_tok = tmp_path / "notok"
    shutil.copytree(only_fp32, no_tok)
    (no_tok / mf.TOKENIZER_FILE).unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_engine(no_tok)


def test_onnx_path_runs_without_torch(tiny_onnx_dir):
    """A server-only install has no torch or transformers: the ONNX path must not import them."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        sys.modules["transformers"] = None
        from codeparrot_ls.engine import Decoder, GenerationRequest, load_engine
        eng = load_engine({str(tiny_onnx_dir)!r})
        gen = Decoder(eng).generate(GenerationRequest(eng.tokenizer.encode("def main():").ids, max_new_tokens=6))[0]
        assert len(gen.token_ids) == 6, gen
        try:
            load_engine({str(tiny_onnx_dir)!r}, engine="torch")
        except Exception as e:
            print(type(e).__name__, e)
        print("ok", eng.info.engine, eng.info.extra["precision"])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok onnx int8" in out.stdout
    assert "ModelLoadError" in out.stdout and "torch" in out.stdout


def test_export_info_matches_engine_info(tiny_onnx_dir, onnx_int8):
    info = json.loads((tiny_onnx_dir / mf.EXPORT_INFO_FILE).read_text())
    assert info["n_positions"] == onnx_int8.info.n_positions
    assert info["eos_token_id"] == onnx_int8.info.eos_id
    assert info["special_token_ids"] == onnx_int8.info.special_ids


def _cache(past, rows=slice(None)):
    return [a[rows, :, : past.length] for a in past.buffer.arrays]


def test_prefill_ends_join_a_short_tail_to_the_chunk_before():
    assert prefill_ends(786, 256) == [256, 512, 786]          # an 18-token tail joins
    assert prefill_ends(840, 256) == [256, 512, 768, 840]     # a 72-token tail is its own pass
    assert prefill_ends(768, 256) == [256, 512, 768]
    assert prefill_ends(300, 256) == [300] and prefill_ends(200, 256) == [200]
    assert prefill_ends(5000, 0) == [5000]


@pytest.mark.parametrize("length", [130, 150, 200])
def test_the_decoder_prefills_in_the_engines_own_passes(onnx_fp32, length):
    """The decoder checks its budget between the passes the engine would run anyway: each of
    its prompt pieces is one engine pass (a short tail joined to the chunk before)."""
    passes, run = [], onnx_fp32.graph.run

    def counted(input_ids, *a, **k):
        passes.append(input_ids.shape[1])
        return run(input_ids, *a, **k)

    onnx_fp32.graph.run, chunk, onnx_fp32.prefill_chunk = counted, onnx_fp32.prefill_chunk, 64
    try:
        fresh(onnx_fp32).generate(GenerationRequest(prompt_ids(onnx_fp32, length), max_new_tokens=1))
    finally:
        del onnx_fp32.graph.run
        onnx_fp32.prefill_chunk = chunk
    ends = prefill_ends(length, 64)
    assert passes == [b - a for a, b in zip([0, *ends], ends)]


@pytest.mark.parametrize("keep", [1, 5, 130, 200])
def test_chunked_prefill_matches_one_pass(onnx_fp32, keep):
    ids = np.array([prompt_ids(onnx_fp32, 200)], np.int64)
    chunk = onnx_fp32.prefill_chunk
    try:
        onnx_fp32.prefill_chunk = 0
        one, past_one = onnx_fp32.forward(ids, None, keep)
        onnx_fp32.prefill_chunk = 64
        chunked, past_chunked = onnx_fp32.forward(ids, None, keep)
    finally:
        onnx_fp32.prefill_chunk = chunk
    assert chunked.shape == one.shape == (1, keep, onnx_fp32.info.vocab_size)
    assert np.abs(chunked - one).max() < 1e-4
    assert past_one.length == past_chunked.length == 200
    assert all(np.abs(a - b).max() < 1e-4 for a, b in zip(_cache(past_one), _cache(past_chunked)))


def test_padded_batch_after_a_past_matches_single_rows(onnx_fp32):
    """Several new tokens after a past in a left-padded batch (run token by token) equal each row alone."""
    ids = prompt_ids(onnx_fp32, 60)
    rows = np.array([ids[:40], ids[10:50]], np.int64)
    mask = np.ones((2, 40), np.int64)
    mask[0, :8] = 0
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    _, past = onnx_fp32.forward(rows, None, 1, attention_mask=mask, position_ids=pos)
    more = np.array([ids[40:45], ids[50:55]], np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 5), np.int64)], axis=1)
    logits, past = onnx_fp32.forward(more, past, 3, attention_mask=mask2, position_ids=pos[:, -1:] + np.arange(1, 6))
    assert logits.shape == (2, 3, onnx_fp32.info.vocab_size) and past.length == 45
    alone0, _ = onnx_fp32.forward(np.array([ids[8:45]], np.int64), None, 3)
    alone1, _ = onnx_fp32.forward(np.array([ids[10:55]], np.int64), None, 3)
    assert np.abs(logits[0] - alone0[0]).max() < 1e-4
    assert np.abs(logits[1] - alone1[0]).max() < 1e-4


def test_truncated_past_is_extended_in_place(onnx_fp32):
    """KV prefix reuse: a truncated past shares the buffer; extending it equals a cold run."""
    ids = prompt_ids(onnx_fp32, 50)
    _, full = onnx_fp32.forward(np.array([ids[:50]], np.int64), None, 1)
    short = onnx_fp32.truncate_past(full, 30)
    assert short.buffer is full.buffer and onnx_fp32.past_length(short) == 30
    other = ids[:30] + list(reversed(ids[30:50]))
    logits, past = onnx_fp32.forward(np.array([other[30:]], np.int64), short, 1)
    cold, cold_past = onnx_fp32.forward(np.array([other], np.int64), None, 1)
    assert np.abs(logits - cold).max() < 1e-4
    assert all(np.abs(a - b).max() < 1e-4 for a, b in zip(_cache(past), _cache(cold_past)))


def test_stop_inside_required_prefix_does_not_stop(onnx_fp32):
    ids = prompt_ids(onnx_fp32, 40)
    gen = fresh(onnx_fp32).generate(GenerationRequest(ids, max_new_tokens=12, required_prefix="\n    x",
                                                      stop=["\n"]))[0]
    assert gen.text.startswith("\n    x")
    assert gen.finish_reason in ("stop", "length") and "\n" not in gen.text[1:]


def test_logits_of_a_pass_survive_the_next_pass(onnx_int8):
    """The engine reuses one IOBinding per KV buffer; the logits it returned must not be overwritten."""
    ids = prompt_ids(onnx_int8, 12)
    first, past = onnx_int8.forward(np.array([ids[:10]], np.int64), None, 1)
    kept = first.copy()
    second, past = onnx_int8.forward(np.array([ids[10:11]], np.int64), past, 1)
    third, _ = onnx_int8.forward(np.array([ids[11:12]], np.int64), past, 1)
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(second, third)
