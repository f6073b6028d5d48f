"""The whole pipeline with a real (tiny, random) model: ONNX as served, torch once.

A random model writes nonsense, so these tests check invariants that must hold for any
model: every suggestion passes the post-processing rules, typing along is served from the
cache, cancellation stops work. (Positions and ranges: test_positions.py, test_server.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codeparrot_ls import prompt as P
from codeparrot_ls.completion import Completer, stops_for
from codeparrot_ls.healing import last_pretoken_start
from codeparrot_ls.positions import line_start
from codeparrot_ls.postprocess import CursorContext, postprocess
from codeparrot_ls.settings import CompletionSettings

DATA = Path(__file__).parent / "data"
DOC = (DATA / "settings_module.py").read_text(encoding="utf-8")
URI = "file:///project/settings.py"
# Generous time budget: the shared test machine may be slow; tokens are the limit here.
SETTINGS = CompletionSettings(max_new_tokens=12, time_budget_ms=60_000, num_candidates=3, temperature=0.8)


@pytest.fixture(scope="module")
def completer(tiny_onnx_dir):
    from codeparrot_ls.engine import load_engine

    c = Completer(load_engine(tiny_onnx_dir, "onnx", threads=1))
    yield c
    c.close()


def positions(text: str, step: int):
    """Every `step`-th offset."""
    return range(0, len(text), step)


def check(text: str, off: int, suggestions, settings, invoked: bool) -> None:
    ctx = CursorContext.from_document(text, off)
    assert len(suggestions) <= (settings.num_candidates if invoked else 1)
    assert len({s.insert_text for s in suggestions}) == len(suggestions)
    for s in suggestions:
        one_line = settings.single_line or ctx.mid_line
        min_chars = 1 if invoked else settings.min_chars
        assert postprocess(s.insert_text, ctx, one_line, min_chars) == s.insert_text, s
        assert not any(stop in s.insert_text for stop in [*P.PYTHON_STOP_SEQUENCES, *settings.stop])
        if one_line:
            assert "\n" not in s.insert_text


def test_offsets_outside_the_document_raise(completer):
    for off in (len(DOC) + 1, -1):
        with pytest.raises(ValueError, match="outside a document"):
            completer.complete(URI, DOC, off, SETTINGS, invoked=False)


@pytest.mark.slow
def test_every_suggestion_passes_the_rules(completer):
    shown = 0
    for i, off in enumerate(positions(DOC, 211)):
        invoked = i % 3 == 0
        out = completer.complete(URI, DOC, off, SETTINGS, invoked=invoked)
        check(DOC, off, out, SETTINGS, invoked)
        shown += len(out)
    assert shown > 0  # the pipeline does show suggestions


def test_single_line_mode_and_extra_stops(completer):
    s = CompletionSettings(max_new_tokens=16, time_budget_ms=60_000, single_line=True, stop=["e"])
    for off in positions(DOC, 401):
        out = completer.complete(URI, DOC, off, s, invoked=False)
        check(DOC, off, out, s, False)


def test_typing_along_is_answered_from_the_cache(completer):
    base = completer.stats.model_runs
    uri = "file:///project/typing.py"
    for off in positions(DOC, 97):
        out = completer.complete(uri, DOC, off, SETTINGS, invoked=False)
        if out and len(out[0].insert_text) >= 3 and "\n" not in out[0].insert_text[:2]:
            break
    else:
        pytest.skip("the random model suggested nothing long enough")
    runs = completer.stats.model_runs
    text = out[0].insert_text
    for k in (1, 2):  # type the suggestion's first characters
        doc = DOC[:off] + text[:k] + DOC[off:]
        again = completer.complete(uri, doc, off + k, SETTINGS, invoked=False)
        assert [s.insert_text for s in again] == [text[k:]] and again[0].from_cache
    assert completer.stats.model_runs == runs > base
    # Typing something else runs the model again.
    doc = DOC[:off] + "\x01" + DOC[off:]
    completer.complete(uri, doc, off + 1, SETTINGS, invoked=False)
    assert completer.stats.model_runs == runs + 1


def test_successive_prompts_while_typing_reuse_the_kv_cache(completer):
    anchor = "        if self.num_candidates < 1"
    off = DOC.index(anchor) + len(anchor)
    s = CompletionSettings(max_new_tokens=4, time_budget_ms=60_000)
    doc = DOC
    for k, ch in enumerate(" or"):
        doc = doc[:off + k] + ch + doc[off + k:]
        completer.complete("file:///kv.py", doc, off + k + 1, s, invoked=False)
        if k:
            assert completer.stats.last_reused_tokens >= completer.stats.last_prompt_tokens - 8


def test_token_healing_backs_up_over_the_half_typed_word(completer):
    doc = DOC + "\nimport os\nos.pa"
    completer.complete(URI, doc, len(doc), SETTINGS, invoked=False)
    assert completer.stats.last_healed == doc[last_pretoken_start(completer.tokenizer, doc):]
    assert completer.stats.last_healed.endswith("pa")
    no_heal = CompletionSettings(max_new_tokens=4, time_budget_ms=60_000, token_healing=False)
    completer.complete(URI, doc, len(doc), no_heal, invoked=False)
    assert completer.stats.last_healed == ""


def test_single_line_healing_keeps_the_line_break_in_the_prompt(completer):
    always = Completer(completer.engine, healing_policy="always")
    doc = "def scale(values, factor):\n    "
    s = CompletionSettings(max_new_tokens=6, time_budget_ms=60_000, single_line=True)
    out = always.complete("file:///sl.py", doc, len(doc), s, invoked=False)
    assert always.stats.last_healed == "    "   # re-typed: the indentation, not the "\n"
    check(doc, len(doc), out, s, False)
    always.complete("file:///ml.py", doc, len(doc), SETTINGS, invoked=False)
    assert always.stats.last_healed.endswith("\n    ")  # multi-line: the whole last pre-token
    # The default policy leaves a cursor after the full indentation alone (a boundary for
    # the code pre-tokenizer) but heals at a line start.
    completer.complete("file:///ml.py", doc, len(doc), SETTINGS, invoked=False)
    assert completer.stats.last_healed == ""
    completer.complete("file:///ls.py", doc[:-4], len(doc) - 4, SETTINGS, invoked=False)
    assert completer.stats.last_healed.endswith("\n")


def test_stops_that_could_match_in_the_healed_text_are_applied_afterwards():
    engine_side, after = stops_for("\n", ["\ndef ", "\n\n\n", "foo", "\n"])
    assert engine_side == ["foo"] and after == ["\ndef ", "\n\n\n", "\n"]
    assert stops_for("", ["\ndef "]) == (["\ndef "], [])


def test_the_start_of_an_empty_document(completer):
    for fim in (True, False):   # a left-to-right prompt of nothing starts like a training document
        s = CompletionSettings(max_new_tokens=4, time_budget_ms=60_000, fim=fim, min_chars=1)
        check("", 0, completer.complete("file:///empty.py", "", 0, s, invoked=False), s, False)


def test_non_ascii_documents(completer):
    doc = "greeting = '😀 héllo'  # 😀\nname = greeting.upper("
    out = completer.complete("file:///u.py", doc, len(doc), SETTINGS, invoked=True)
    check(doc, len(doc), out, SETTINGS, True)
    first = "greeting = '😀 "
    out = completer.complete("file:///u.py", doc, len(first), SETTINGS, invoked=True)
    check(doc, len(first), out, SETTINGS, True)


def test_cancellation_returns_nothing_and_stops_decoding(completer):
    assert completer.complete(URI, DOC, 100, SETTINGS, invoked=False, is_cancelled=lambda: True) == []
    calls = []

    def cancel_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    s = CompletionSettings(max_new_tokens=48, time_budget_ms=60_000)
    assert completer.complete("file:///c.py", DOC, line_start(DOC, 60), s, invoked=False,
                              is_cancelled=cancel_after_three) == []
    assert len(calls) <= 6  # checked before every token: stopped right after the flag flipped


def test_disabled_and_other_documents(completer):
    assert completer.complete(URI, DOC, 100, CompletionSettings(enabled=False), invoked=True) == []
    other = (DATA / "model_module.py").read_text(encoding="utf-8")
    off = line_start(DOC, 60)
    out = completer.complete(URI, DOC, off, SETTINGS, invoked=False,
                             other_documents=[("file:///project/model.py", other), (URI, DOC)])
    check(DOC, off, out, SETTINGS, False)
    assert completer.builder.build(DOC, off, SETTINGS,
                                   [("file:///project/model.py", other)]).context.snippets  # they were used


@pytest.mark.slow
def test_torch_engine_gives_the_same_greedy_suggestions(tiny_checkpoint_dir, completer):
    from codeparrot_ls.engine import load_engine

    torch_completer = Completer(load_engine(tiny_checkpoint_dir, "torch", threads=1))
    s = CompletionSettings(max_new_tokens=8, time_budget_ms=60_000)
    fresh = Completer(completer.engine)  # same ONNX engine, empty cache
    same = 0
    for off in positions(DOC, 503):
        a = fresh.complete("file:///t.py", DOC, off, s, invoked=False)
        b = torch_completer.complete("file:///t.py", DOC, off, s, invoked=False)
        check(DOC, off, b, s, False)
        same += [x.insert_text for x in a] == [x.insert_text for x in b]
    assert same >= 0.7 * len(range(0, len(DOC), 503))  # int8 ONNX vs fp32 torch may differ on close calls


def test_lookup_tokens_setting_reaches_the_engine(completer):
    """`lookupTokens` 0 decodes one token per pass; the default lets passes check drafts."""
    seen = []
    generate = completer.decoder.generate

    def recording(request):
        seen.append(request.lookup_tokens)
        return generate(request)

    completer.decoder.generate = recording
    try:
        for n in (0, 4):   # (different settings: no answer from the cache)
            completer.complete("file:///project/lookup.py", DOC, line_start(DOC, 30), SETTINGS.updated({"lookupTokens": n}),
                               invoked=False)
    finally:
        del completer.decoder.generate
    assert seen == [0, 4]
