"""Huge documents cost what the context budget allows, not what the document weighs.

Unit level (the tiny real tokenizer): the window of a document that a request reads gives
exactly the prompt the whole document gives; the token-count cache is bounded in bytes; a
cancellation that comes after decoding still stops the request. End to end (slow): the real
server over stdio with the packaged default model, a 10 MB line and a 200,000-line document,
typing on a long line, 500 documents of 100 KB opened and closed (two rounds of 250): every request is answered (a
generous timeout only detects a hang) and the server's RSS (from /proc) stays bounded and
comes back after didClose.
"""

from __future__ import annotations

import asyncio
import random
import sysconfig
from pathlib import Path

import pytest
from lsprotocol import types as T

from codeparrot_ls import prompt as P
from codeparrot_ls.context import ContextBuilder
from codeparrot_ls.fitting import TokenCounter
from codeparrot_ls.engine.onnx_engine import DEFAULT_PREFILL_CHUNK
from codeparrot_ls.positions import line_start, locate
from codeparrot_ls.settings import CompletionSettings
from codeparrot_ls.status import DEFAULT_MODEL_DIR
from test_server import serve

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE = (STDLIB / "tarfile.py").read_text(encoding="utf-8")
MB = 1 << 20
HANG = 300          # seconds: only a hang takes this long


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ----------------------------------------------------------------------------- the window

@pytest.fixture(scope="module")
def builder(tok):
    return ContextBuilder(tok, P.special_token_ids(tok.get_vocab()), n_positions=512, supports_fim=True)


def prompt_both_ways(builder, text, offset, settings):
    line = text.count("\n", 0, offset)
    use_fim = settings.fim is not False
    whole = builder.build(text, offset, line, settings, use_fim=use_fim).prompt_ids()
    view, start = builder.window(text, offset, settings)
    assert len(view) < len(text)
    windowed = builder.build(view, offset - start, line, settings, use_fim=use_fim).prompt_ids()
    return whole, windowed


@pytest.mark.parametrize("fim", [True, False])
def test_the_window_gives_the_prompt_the_whole_document_gives(builder, fim):
    settings = CompletionSettings(fim=fim)
    doc = CODE * 4
    rng = random.Random(0)
    for offset in [0, 5, len(CODE) * 2, len(doc) - 1, len(doc)] + [rng.randrange(len(doc)) for _ in range(20)]:
        whole, windowed = prompt_both_ways(builder, doc, offset, settings)
        assert windowed == whole, offset


def test_the_window_of_one_huge_line_gives_the_same_prompt(builder):
    line = "x = [" + ", ".join(str(i) for i in range(20_000)) + "]"
    doc = "import os\n" + line + "\nprint(x)\n"
    for offset in (14, len(doc) // 2, doc.index("]\n")):
        whole, windowed = prompt_both_ways(builder, doc, offset, CompletionSettings())
        assert windowed == whole


def test_a_window_is_bounded_by_the_budget_not_the_document(builder):
    settings = CompletionSettings(context_tokens=256)
    doc = "y = 1\n" * 2_000_000
    view, start = builder.window(doc, len(doc) // 2, settings)
    assert len(view) <= 2 * (256 + 1) * builder.counter.max_token_chars
    assert start > 0


def test_token_counts_are_cached_within_a_byte_bound(tok):
    bound = MB // 4
    counter = TokenCounter(tok, max_bytes=bound)
    lines = [f"value_{i} = compute({i}, 'x' * {i})\n" * 20 for i in range(1500)]   # ~1 MB of keys
    counts = counter.counts(lines[:500]) + counter.counts(lines[500:])
    assert counter.bytes <= bound
    assert counts == [len(tok.encode(ln, add_special_tokens=False).ids) for ln in lines]
    assert counter.counts(lines[-3:]) == counts[-3:]
    huge = "z = 1\n" * (bound // 4)          # larger than the bound: counted, never kept
    assert counter.counts([huge]) == [len(tok.encode(huge, add_special_tokens=False).ids)]
    assert counter.bytes <= bound


def test_a_cursor_deep_in_a_big_document_copies_no_long_line():
    big = "\n".join(map(str, range(300_000)))
    for line in (0, 31, 33, 1000, 299_999):
        assert big[line_start(big, line):].split("\n", 1)[0] == str(line)
    assert line_start(big, 300_000) is None
    long_line = "x" * 5_000_000
    cursor = locate("a = 1\n" + long_line, 1, 3)
    assert (cursor.offset, cursor.character) == (9, 3)
    cursor = locate("a = 1\n" + long_line, 1, 10**9)       # past the end: the end of the line
    assert cursor.offset == 6 + len(long_line)


def test_a_cancellation_after_decoding_stops_post_processing(onnx_int8):
    """The fault injected: the request is cancelled the moment decoding returns."""
    from codeparrot_ls.completion import Completer

    completer = Completer(onnx_int8)
    settings = CompletionSettings(temperature=1.0, num_candidates=4, min_chars=0)
    text = "def area(width, height):\n    return "
    decoded = []
    generate = completer.decoder.generate

    def generate_then_cancel(request):
        decoded.append(generate(request))
        return decoded[-1]

    completer.decoder.generate = generate_then_cancel
    try:
        result = completer.complete("file:///a.py", text, len(text), settings, invoked=True,
                                    is_cancelled=lambda: bool(decoded))
    finally:
        del completer.decoder.generate
    assert decoded and decoded[0], "the engine ran"
    assert result == [] and completer.stats.cancelled == 1


def test_a_long_prompt_stops_between_prefill_chunks_and_the_next_request_reuses_them(onnx_fp32):
    """The fault injected: the request is cancelled once the first chunk has run."""
    from codeparrot_ls.engine import GenerationRequest
    from conftest import fresh, prompt_ids

    engine = onnx_fp32
    ids = prompt_ids(engine, n=200)
    full = fresh(engine).generate(GenerationRequest(ids, max_new_tokens=8))[0]
    calls = []
    forward = engine.forward

    def counted(*args, **kw):
        calls.append(args[0].shape[1])
        return forward(*args, **kw)

    decoder = fresh(engine)
    engine.forward, engine.prefill_chunk = counted, 64
    try:
        out = decoder.generate(GenerationRequest(ids, max_new_tokens=8, is_cancelled=lambda: bool(calls)))
        assert [g.finish_reason for g in out] == ["cancelled"] and out[0].token_ids == []
        assert calls == [64], "one chunk ran, the other 136 prompt tokens did not"
        again = decoder.generate(GenerationRequest(ids, max_new_tokens=8))[0]
    finally:
        del engine.forward
        engine.prefill_chunk = DEFAULT_PREFILL_CHUNK
    assert again.reused_tokens == 64 and again.token_ids == full.token_ids


# ----------------------------------------------------------------------------- end to end

async def request(s, uri: str, line: int, character: int) -> list:
    params = T.InlineCompletionParams(
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
        text_document=T.TextDocumentIdentifier(uri), position=T.Position(line, character))
    result = await asyncio.wait_for(s.client.text_document_inline_completion_async(params), HANG)
    return list(result.items)


async def settled_rss(s) -> int:
    # A round trip: everything sent before has been handled (500 opened documents take a while).
    await asyncio.wait_for(s.client.workspace_execute_command_async(T.ExecuteCommandParams("codeparrot.stats")), HANG)
    return rss(s.client._server.pid)


def close(s, uri: str) -> None:
    s.client.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(uri)))


async def warm(s) -> int:
    s.open("file:///warm.py", CODE[:4000])
    await request(s, "file:///warm.py", 40, 0)
    close(s, "file:///warm.py")
    return await settled_rss(s)


@pytest.mark.slow
async def test_a_10_mb_line_and_a_200000_line_document_bounded_in_memory_and_answered():
    async with serve("--model", str(DEFAULT_MODEL_DIR)) as s:
        base = await warm(s)
        line = "x = [" + "1, " * (10_000_000 // 3) + "]"
        lines = CODE.split("\n")
        many = "\n".join(lines[i % len(lines)] for i in range(200_000))
        for uri, text, positions in [
                ("file:///line.py", line, [(0, 3), (0, len(line) // 2), (0, len(line))]),
                ("file:///lines.py", many, [(0, 0), (100_000, 4), (199_999, len(many.rsplit("\n", 1)[1]))])]:
            s.open(uri, text)
            for ln, col in positions:
                assert isinstance(await request(s, uri, ln, col), list)
                assert rss(s.client._server.pid) - base < 100 * MB
            close(s, uri)
            del text
            assert await settled_rss(s) - base < 40 * MB, uri
        stats = await s.stats()
        assert stats["scheduler"]["errors"] == 0 and stats["snippetDocuments"] == 0


@pytest.mark.slow
async def test_typing_at_the_end_of_a_long_line_and_many_documents_opened_and_closed():
    async with serve("--model", str(DEFAULT_MODEL_DIR)) as s:
        base = await warm(s)
        uri, text = "file:///typing.py", "y = " + "'ab', " * (2_000_000 // 6)
        s.open(uri, text)
        for version, ch in enumerate("foo(bar, baz)", 2):
            pos = T.Position(0, len(text))
            s.client.text_document_did_change(T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(version=version, uri=uri),
                [T.TextDocumentContentChangePartial(range=T.Range(pos, pos), text=ch)]))
            text += ch
            assert isinstance(await request(s, uri, 0, len(text)), list)
        assert rss(s.client._server.pid) - base < 100 * MB
        close(s, uri)
        after_typing = await settled_rss(s)
        assert after_typing - base < 40 * MB

        body = (CODE * 2)[:100_000]
        rounds = []
        for r in range(2):
            for i in range(250):
                s.open(f"file:///many/m{i}.py", f"# {r} {i}\n" + body)
                close(s, f"file:///many/m{i}.py")
            rounds.append(await settled_rss(s))
        assert max(rounds) - after_typing < 40 * MB, rounds
        assert rounds[-1] - rounds[0] < 10 * MB, rounds    # nothing accumulates from round to round
        assert (await s.stats())["snippetDocuments"] == 0
