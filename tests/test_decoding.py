"""`GenerationRequest.stop_when` in the shared decode loop, on the tiny real model (torch)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from codeparrot_ls.engine import Decoder, GenerationRequest, load_engine
from codeparrot_ls.engine.rows import complete_text, decode_utf8

SOURCE = (Path(textwrap.__file__).parent / "pprint.py").read_text(encoding="utf-8")
# Forces line breaks and indentation into the generated text: the model re-types it first.
REQUIRED = "if x:\n    y = 1\n\n  z"


@pytest.fixture(scope="module")
def decoder(tiny_checkpoint_dir):
    return Decoder(load_engine(tiny_checkpoint_dir, threads=1))


def cold_generate(decoder, **kw):
    decoder.reset()  # no KV reuse: runs compared below compute the same way
    ids = decoder.tokenizer.encode(SOURCE).ids[200:260]
    return decoder.generate(GenerationRequest(ids, **kw))


def texts_after_each_token(decoder, token_ids) -> list[str]:
    pieces = decoder.table.pieces
    raw, out = b"", []
    for t in token_ids:
        raw += pieces[t]
        out.append(decode_utf8(raw))
    return out


def test_asked_only_at_line_ends_and_first_visible_characters(decoder):
    asked = []
    gen = cold_generate(decoder, max_new_tokens=40, required_prefix=REQUIRED,
                        stop_when=lambda text: asked.append(text))[0]
    assert gen.text.startswith(REQUIRED)
    texts = texts_after_each_token(decoder, gen.token_ids)
    expected = []
    for before, after in zip(["", *texts], texts):
        new_line_break = after.count("\n") > before.count("\n")
        last_line = lambda t: t[t.rfind("\n") + 1:]
        first_visible = ("\n" in before and not last_line(before).strip(" \t")
                         and bool(last_line(after).strip(" \t")) and not new_line_break)
        if new_line_break or first_visible:
            expected.append(after)
    assert asked == expected
    assert len(asked) >= 4  # three line breaks and "z" at least


def test_keeps_what_it_says_and_decodes_no_further(decoder):
    full = cold_generate(decoder, max_new_tokens=40, required_prefix=REQUIRED)[0]
    keep = len("if x:\n    y = 1")
    early = cold_generate(decoder, max_new_tokens=40, required_prefix=REQUIRED,
                          stop_when=lambda text: keep if text.count("\n") >= 2 else None)[0]
    assert early.finish_reason == "stop" and early.text == full.text[:keep]
    n = len(early.token_ids)
    assert n < len(full.token_ids) and early.token_ids == full.token_ids[:n]
    # It stopped on the token that brought the second line break.
    assert texts_after_each_token(decoder, early.token_ids)[-1].count("\n") == 2
    assert texts_after_each_token(decoder, early.token_ids[:-1])[-1].count("\n") == 1


def test_each_sample_and_each_batch_row_stops_on_its_own(decoder):
    stop_when = lambda text: 2 if text.count("\n") >= 2 else None
    gens = cold_generate(decoder, max_new_tokens=30, temperature=1.0, num_samples=3, seed=1,
                         required_prefix=REQUIRED, stop_when=stop_when)
    assert [g.text for g in gens] == ["if"] * 3
    ids = decoder.tokenizer.encode(SOURCE).ids
    requests = [GenerationRequest(ids[100:140], max_new_tokens=30, required_prefix=REQUIRED, stop_when=stop_when),
                GenerationRequest(ids[300:320], max_new_tokens=5)]
    stopped, free = decoder.generate_batch(requests)
    assert stopped.text == "if" and stopped.finish_reason == "stop"
    assert free.finish_reason in ("length", "eos") and len(free.token_ids) <= 5


def test_text_handed_to_the_predicate_never_splits_a_character():
    assert complete_text("é".encode()) == "é"
    assert complete_text(b"a = '\xe2\x82") == "a = '"          # the euro sign, cut off
    assert complete_text(b"x\xff\ny") is None                  # invalid: no offsets to map back
