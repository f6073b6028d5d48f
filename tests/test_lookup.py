"""Prompt-lookup drafts in greedy decoding (`GenerationRequest.lookup_tokens`): the same tokens
as one token per pass, in fewer passes, with a KV cache that matches what was fed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from codeparrot_ls.engine import GenerationRequest, load_engine
from codeparrot_ls.engine.lookup import MAX_DRAFT_GROWTH, PromptLookup
from codeparrot_ls.engine.rows import Row
from conftest import fresh

SOURCE = (Path(textwrap.__file__).parent / "pprint.py").read_text(encoding="utf-8")


def prompt_ids(engine) -> list[int]:
    return engine.tokenizer.encode(SOURCE).ids[300:360] * 2   # repeated code: drafts to find


@pytest.fixture(scope="module", params=["torch", "onnx-fp32"])
def engine(request, tiny_checkpoint_dir, tiny_onnx_dir):
    # fp32 only: an int8 graph quantizes activations with one scale per pass, so a pass of
    # several tokens can break a near-tie differently from one token at a time.
    if request.param == "torch":
        return load_engine(tiny_checkpoint_dir, engine="torch", threads=1)
    return load_engine(tiny_onnx_dir, engine="onnx", threads=1, precision="fp32")


def counted(engine, **kw):
    """A cold greedy generation and the number of tokens fed in each forward pass after the prompt."""
    fed = []
    forward = engine.forward

    def counting(input_ids, past, *a, **k):
        if past is not None:
            fed.append(input_ids.shape[1])
        return forward(input_ids, past, *a, **k)

    engine.forward = counting
    try:
        gen = fresh(engine).generate(GenerationRequest(prompt_ids(engine), **kw))[0]
    finally:
        engine.forward = forward
    return gen, fed


def test_same_tokens_with_every_way_of_stopping(engine):
    """Stop strings, re-typed (healed) text and the end of the model's positions end a drafted
    generation where they end a plain one (the tiny model writes no line breaks, so the
    line-based early stop is left to tests/test_completion_early_stop.py)."""
    plain = counted(engine, max_new_tokens=40, lookup_tokens=0)[0]
    stop = plain.text[len(plain.text) // 2:][:3]
    n_prompt = len(prompt_ids(engine))
    cases = [dict(stop=[stop]),
             dict(required_prefix=plain.text[:5]),
             dict(max_new_tokens=engine.info.n_positions)]       # runs into the model's positions
    for kw in cases:
        kw = {"max_new_tokens": 40, **kw}
        a = counted(engine, lookup_tokens=0, **kw)[0]
        b = counted(engine, lookup_tokens=4, **kw)[0]
        assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason), kw
    assert n_prompt + len(a.token_ids) <= engine.info.n_positions


def test_same_tokens_in_fewer_passes(engine):
    plain, plain_fed = counted(engine, max_new_tokens=40, lookup_tokens=0)
    drafted, drafted_fed = counted(engine, max_new_tokens=40, lookup_tokens=4)
    assert drafted.token_ids == plain.token_ids
    assert (drafted.text, drafted.finish_reason) == (plain.text, plain.finish_reason)
    assert set(plain_fed) == {1}
    assert max(drafted_fed) > 1, "no draft was tried"
    assert len(drafted_fed) < len(plain_fed), "no draft was accepted"


def test_a_draft_kept_whole_grows_the_next_one(engine):
    """The tiny model repeats itself: once a draft is kept whole the next pass checks a longer
    one, still with the tokens of one token per pass."""
    plain, _ = counted(engine, max_new_tokens=40, lookup_tokens=0)
    drafted, fed = counted(engine, max_new_tokens=40, lookup_tokens=2)
    assert drafted.token_ids == plain.token_ids
    assert max(fed) > 1 + 2, f"no draft grew past lookup_tokens: {fed}"
    assert max(fed) <= 1 + 2 * MAX_DRAFT_GROWTH


def test_draft_size_doubles_while_kept_and_falls_back_on_a_miss():
    row = make_row([1] * 6, [1, 2], max_new_tokens=100)
    sizes = []
    for kept_whole in (True, True, True, True, False, True):
        size = row.draft_room(n_positions=1000)
        sizes.append(size)
        row.drafted(size, size if kept_whole else size - 1)
    assert sizes == [4, 8, 16, 16, 16, 4]     # capped at MAX_DRAFT_GROWTH * lookup_tokens
    assert row.draft_room(n_positions=1000) == 8
    row.drafted(8, 0)
    assert row.draft_room(n_positions=1000) == 4


def wrong_draft_prompt(engine) -> list[int]:
    """A prompt whose first generated token also stands early in it, followed by other tokens:
    the first draft is those, and the model (which repeats that token) rejects it."""
    ids = engine.tokenizer.encode(SOURCE).ids
    for start in range(0, 1200, 60):
        body = ids[start:start + 80]
        first = fresh(engine).generate(GenerationRequest(body, max_new_tokens=1, lookup_tokens=0))[0].token_ids[0]
        if first in body:
            continue
        others = [t for t in ids[:20] if t != first][:3]
        prompt = [first, *others, *body]
        if fresh(engine).generate(GenerationRequest(prompt, max_new_tokens=1, lookup_tokens=0))[0].token_ids[0] == first:
            return prompt
    pytest.fail("no prompt found whose first draft the model rejects")


def test_a_rejected_draft_is_cut_from_the_kv_cache(engine):
    prompt = wrong_draft_prompt(engine)
    cuts = []
    truncate = engine.truncate_past

    def recording(past, length):
        if length < engine.past_length(past):
            cuts.append(engine.past_length(past) - length)
        return truncate(past, length)

    plain = fresh(engine).generate(GenerationRequest(prompt, max_new_tokens=24, lookup_tokens=0))[0]
    engine.truncate_past = recording
    try:
        decoder = fresh(engine)
        drafted = decoder.generate(GenerationRequest(prompt, max_new_tokens=24, lookup_tokens=4))[0]
    finally:
        engine.truncate_past = truncate
    assert cuts, "no draft was cut back"
    assert drafted.token_ids == plain.token_ids
    cache = decoder.cached
    assert engine.past_length(cache.past) == len(cache.ids)
    # A next request that extends what was fed: reusing that cache gives what a cold engine gives.
    follow = GenerationRequest(list(cache.ids) + prompt[:3], max_new_tokens=12)
    warm = decoder.generate(follow)[0]
    assert warm.reused_tokens > 0
    assert fresh(engine).generate(follow)[0].token_ids == warm.token_ids


def draft(prompt, generated, room=3):
    return PromptLookup(prompt, max_new_tokens=20).draft(generated, room)


def test_draft_is_what_followed_the_latest_longest_match():
    # ... 7 8 9 | 1 2 3 | 4 4 2 3 | 5 6 ... and the output ends in "1 2 3": the three-token
    # match (positions 3-5) wins over the later two-token one (positions 8-9).
    prompt = [7, 8, 9, 1, 2, 3, 4, 4, 2, 3, 5, 6, 0]
    assert draft(prompt, [1, 2, 3]) == [4, 4, 2]
    # Only the last token matches anywhere: its latest earlier place is used.
    assert draft(prompt, [5, 2]) == [3, 5, 6]
    # A run of one token: the place with the longest draft after it.
    assert draft([9, 4, 4, 4, 4], [4]) == [4, 4]
    assert draft(prompt, [1, 2, 3], room=1) == [4]


def test_no_draft_without_a_match_or_without_room():
    assert draft([1, 2, 3], [42]) == []
    assert draft([1, 2, 3, 1, 2], []) == []                       # nothing generated yet
    assert draft([1, 2, 3, 1, 2, 3], [1, 2], room=0) == []


def make_row(prompt, generated, max_new_tokens=20, **kw) -> Row:
    row = Row(GenerationRequest(prompt, max_new_tokens=max_new_tokens, **kw), len(prompt))
    row.ids = list(generated)
    return row


def test_draft_room_keeps_within_the_budget_and_the_positions():
    assert make_row([1] * 6, [1, 2]).draft_room(n_positions=100) == 4              # lookup_tokens
    assert make_row([1] * 6, [1, 2], max_new_tokens=3).draft_room(n_positions=100) == 1
    assert make_row([1] * 6, [1, 2]).draft_room(n_positions=9) == 0                # positions full
    assert make_row([1] * 6, [1, 2], temperature=0.8).draft_room(n_positions=100) == 0
    assert make_row([1] * 6, [1, 2], lookup_tokens=0).draft_room(n_positions=100) == 0
    healing = make_row([1] * 6, [], required_prefix="os.pa")                         # re-typing the healed text
    assert healing.draft_room(n_positions=100) == 0
