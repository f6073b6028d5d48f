"""The language server end to end: the real `codeparrot-ls` process over stdio, driven by
pytest-lsp's client, serving the tiny exported model (random weights, so its suggestions are
junk: these tests check structure, ranges, cancellation and robustness; the completion
pipeline's own tests check what a suggestion may contain)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import sys
import time

import pytest
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException
from pytest_lsp.client import make_test_lsp_client

CLI = [sys.executable, "-m", "codeparrot_ls.cli"]
INLINE_CLIENT = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(inline_completion=T.InlineCompletionClientCapabilities()))
LIST_CLIENT = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(completion=T.CompletionClientCapabilities()))

# Real code; the cursor goes at the end of the last line, where a body continues.
SOURCE = ("def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
          "        self.x = x\n        self.")
END = T.Position(SOURCE.count("\n"), len(SOURCE.split("\n")[-1]))
# Junk from a random model is sometimes all dropped by post-processing: sampling 8 candidates
# makes "no suggestion at all" vanishingly unlikely where a test needs one.
SAMPLING = {"temperature": 1.0, "numCandidates": 8}
# Sampling several long candidates keeps the worker busy long enough to cancel mid-way.
LONG = {"maxNewTokens": 200, "timeBudgetMs": 60000, "numCandidates": 8, "temperature": 1.0}


class Session:
    def __init__(self, client):
        self.client = client
        self.statuses: list = []
        client.feature("$/codeparrot/status")(lambda ls, params: self.statuses.append(params))

    async def wait_status(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.statuses or self.statuses[-1].state in ("loading", "none"):
            assert time.monotonic() < deadline, f"no final status after {timeout} s: {self.statuses}"
            await asyncio.sleep(0.02)
        return self.statuses[-1].state

    def open(self, uri: str, text: str, language: str = "python") -> None:
        self.client.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(uri, language, 1, text)))

    def inline_request(self, uri: str, position: T.Position, invoked: bool = False, msg_id: str | None = None):
        kind = T.InlineCompletionTriggerKind.Invoked if invoked else T.InlineCompletionTriggerKind.Automatic
        params = T.InlineCompletionParams(context=T.InlineCompletionContext(trigger_kind=kind),
                                          text_document=T.TextDocumentIdentifier(uri), position=position)
        # A task: the request goes out now, not when the caller gets round to awaiting it.
        return asyncio.ensure_future(
            self.client.protocol.send_request_async(T.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id))

    def send_raw(self, method: str, params, msg_id: str):
        """A request exactly as given, bypassing the client's schema (to send malformed params)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.client.protocol._request_futures[msg_id] = future
        self.client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return asyncio.wrap_future(future)

    def cancel(self, msg_id: str) -> None:
        self.client.protocol.notify(T.CANCEL_REQUEST, T.CancelParams(id=msg_id))

    async def inline(self, uri: str, position: T.Position, invoked: bool = False) -> list[T.InlineCompletionItem]:
        result = await asyncio.wait_for(self.inline_request(uri, position, invoked), 60)
        return list(result.items)

    async def command(self, name: str, *args):
        params = T.ExecuteCommandParams(name, list(args) if args else None)
        return await asyncio.wait_for(self.client.workspace_execute_command_async(params), 30)

    async def stats(self) -> dict:
        return await self.command("codeparrot.stats")

    def configure(self, settings) -> None:
        self.client.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings=settings))


@contextlib.asynccontextmanager
async def serve(*args: str, capabilities=INLINE_CLIENT, init=None, env=None, wait=True):
    client = make_test_lsp_client()
    session = Session(client)
    server_env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
    server_env.update(env or {})
    await client.start_io(*CLI, *args, env=server_env)
    try:
        session.init_result = await asyncio.wait_for(client.initialize_session(
            T.InitializeParams(capabilities=capabilities, initialization_options=init)), 60)
        if wait:
            assert await session.wait_status() == "ready", session.statuses
        yield session
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        if client._server is not None and client._server.returncode is None:
            client._server.kill()      # a failed test: do not wait for a clean exit that never comes
        await client.stop()


def record(stats: dict, uri: str) -> dict:
    found = [r for r in stats["scheduler"]["recent"] if r["key"] == uri]
    assert found, f"no job recorded for {uri}: {stats['scheduler']}"
    return found[-1]


def utf16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def assert_on_line(item, line: int, cursor: int, line_units: int) -> None:
    r = item.range
    assert r.start.line == r.end.line == line
    assert 0 <= r.start.character <= cursor <= r.end.character <= line_units
    assert item.insert_text.strip()


async def test_initialize_advertises_features_and_the_onnx_path_never_imports_torch(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir)) as s:
        caps = s.init_result.capabilities
        assert caps.inline_completion_provider is not None
        assert caps.completion_provider is not None and not caps.completion_provider.trigger_characters
        sync = caps.text_document_sync
        assert getattr(sync, "change", sync) == T.TextDocumentSyncKind.Incremental
        assert {"codeparrot.acceptCompletion", "codeparrot.stats"} <= set(caps.execute_command_provider.commands)
        # The model may be ready before the client says `initialized`: then only "ready" is sent.
        assert [st.state for st in s.statuses] in (["loading", "ready"], ["ready"])
        assert s.statuses[-1].engine == "onnx" and s.statuses[-1].loadMs > 0
        loaded = [m.message for m in s.client.log_messages if "ready" in m.message]
        assert loaded and "engine onnx" in loaded[0] and "loaded in" in loaded[0]
        stats = await s.stats()
        assert stats["torchImported"] is False
        assert stats["positionEncoding"] == "utf-16"


async def test_inline_completions_appear_on_the_cursor_line_with_an_accept_command(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        s.open("file:///work/point.py", SOURCE)
        items = await s.inline("file:///work/point.py", END, invoked=True)
        assert items, "an explicit invocation samples several candidates; none survived"
        last = SOURCE.split("\n")[-1]
        for item in items:
            assert_on_line(item, END.line, END.character, utf16(last))
            assert item.command.command == "codeparrot.acceptCompletion"
            assert item.command.arguments[0]["uri"] == "file:///work/point.py"
        await s.command("codeparrot.acceptCompletion", *items[0].command.arguments)
        stats = await s.stats()
        assert stats["accepted"] == 1
        assert record(stats, "file:///work/point.py")["outcome"] == "done"


async def test_opened_python_documents_are_indexed_for_snippets_before_any_request(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir)) as s:
        s.open("file:///work/a.py", SOURCE)
        s.open("file:///work/b.py", SOURCE.replace("Point", "Vector"))
        s.client.text_document_did_open(T.DidOpenTextDocumentParams(
            T.TextDocumentItem("file:///work/notes.txt", "plaintext", 1, "not python")))
        stats = await s.stats()
        assert stats["snippetDocuments"] == 2
        assert stats["completer"]["requests"] == 0
        # A request in another document ranks snippets from that index: it indexes nothing
        # more than the documents' openings did.
        s.open("file:///work/c.py", SOURCE)
        assert (await s.stats())["snippetDocuments"] == 3
        await s.inline("file:///work/c.py", END)
        stats = await s.stats()
        assert stats["snippetDocuments"] == 3 and stats["completer"]["requests"] == 1


async def test_positions_are_utf16_code_units(tiny_onnx_dir):
    # é is one UTF-16 unit (two UTF-8 bytes); 😀 is two UTF-16 units (one code point).
    last = 'label = "é😀" + name.'
    text = "name = 'x'\n" + last
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        s.open("file:///u.py", text)
        cursor = utf16(last)                               # 21 code points, 22 UTF-16 units
        items = await s.inline("file:///u.py", T.Position(1, cursor), invoked=True)
        assert items
        for item in items:
            assert_on_line(item, 1, cursor, cursor)
        # Inside the emoji's surrogate pair: its start (more cases in test_server_positions.py).
        for item in await s.inline("file:///u.py", T.Position(1, last.index("😀") + 1), invoked=True):
            assert item.range.start.character == last.index("😀")
        # The position just after é (a code-point count would put it after "😀" - 1 unit).
        items = await s.inline("file:///u.py", T.Position(1, last.index("😀")), invoked=True)
        for item in items:
            assert item.range.start.character <= last.index("😀") <= item.range.end.character


async def test_utf8_position_encoding_when_the_client_asks_for_it(tiny_onnx_dir):
    caps = T.ClientCapabilities(general=T.GeneralClientCapabilities(position_encodings=[T.PositionEncodingKind.Utf8]),
                                text_document=INLINE_CLIENT.text_document)
    last = 's = "é😀" + s.'
    async with serve("--model", str(tiny_onnx_dir), capabilities=caps, init=SAMPLING) as s:
        assert s.init_result.capabilities.position_encoding == T.PositionEncodingKind.Utf8
        s.open("file:///u8.py", "s = ''\n" + last)
        end = len(last.encode("utf-8"))
        items = await s.inline("file:///u8.py", T.Position(1, end), invoked=True)
        assert items
        for item in items:
            assert item.range.start.character == item.range.end.character == end


async def test_incremental_changes_give_the_same_suggestion_as_a_fresh_document(tiny_onnx_dir):
    # A form feed ends line 0: LSP does not break lines there (str.splitlines does).
    before = "import os\x0c\n\n\ndef path_of(name):\n    return name\n"
    after = "import os\x0c\n\n\ndef path_of(name):\n    base = os.getcwd()\n    return os.path.join(base, name)\n"
    async with serve("--model", str(tiny_onnx_dir), init={"minChars": 1}) as s:
        s.open("file:///edited.py", before)
        # Two incremental edits: insert a line, then replace the return expression.
        edits = [(T.Range(T.Position(4, 4), T.Position(4, 4)), "base = os.getcwd()\n    "),
                 (T.Range(T.Position(5, 11), T.Position(5, 15)), "os.path.join(base, name)")]
        for version, (rng, new_text) in enumerate(edits, start=2):
            s.client.text_document_did_change(T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(version=version, uri="file:///edited.py"),
                [T.TextDocumentContentChangePartial(range=rng, text=new_text)]))
        s.open("file:///fresh.py", after)
        for pos in (T.Position(4, 22), T.Position(5, 17), T.Position(6, 0)):
            edited = await s.inline("file:///edited.py", pos)
            fresh = await s.inline("file:///fresh.py", pos)
            assert [(i.insert_text, i.range) for i in edited] == [(i.insert_text, i.range) for i in fresh]
        # Past the end of the edited document: no suggestion for stale text.
        assert await s.inline("file:///edited.py", T.Position(7, 0)) == []


@pytest.mark.slow
async def test_bad_requests_get_an_error_or_nothing_and_the_server_stays_up(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        with pytest.raises(JsonRpcException, match="unknown document"):
            await s.inline("file:///never-opened.py", T.Position(0, 0))
        s.open("file:///ok.py", SOURCE)
        for pos in (T.Position(500, 0), T.Position(END.line + 1, 0)):   # no such line: nothing
            assert await s.inline("file:///ok.py", pos) == []
        # Params that do not fit the schema: InvalidParams, not a request left hanging.
        for i, params in enumerate(({"textDocument": 5}, {"textDocument": {"uri": "file:///ok.py"},
                                                          "position": {"line": "x"}}, None)):
            with pytest.raises(JsonRpcException, match="malformed params"):
                await asyncio.wait_for(s.send_raw(T.TEXT_DOCUMENT_INLINE_COMPLETION, params, f"bad-{i}"), 30)
        # A 10 MB document, and binary-ish text: NULs, control characters, a lone surrogate, form feeds.
        big = SOURCE + "\n" + ("x = 1  # padding\n" * 620_000)
        s.open("file:///big.py", big)
        await s.inline("file:///big.py", T.Position(big.count("\n"), 0))
        await s.inline("file:///big.py", END)
        binary = "data = b'\x00\x01\x02'\x00\x7f\x1b[0m\n\x0c\nname = '\ud800'\nvalue = \u2028 name."
        s.open("file:///binary.py", binary)
        await s.inline("file:///binary.py", T.Position(3, utf16(binary.split("\n")[3])), invoked=True)
        assert await s.inline("file:///ok.py", END, invoked=True)
        stats = await s.stats()
        assert stats["scheduler"]["errors"] == 0


async def test_an_empty_file_and_a_one_character_file_get_a_suggestion_or_nothing(tiny_onnx_dir):
    """Line 0, character 0 of a new file is a valid prompt (it starts with <|endoftext|>, as
    training documents do); so is every cursor of a one-character file, FIM or not."""
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        cases = [("file:///new.py", "", T.Position(0, 0)), ("file:///x.py", "x", T.Position(0, 0)),
                 ("file:///x.py", "x", T.Position(0, 1)), ("file:///nl.py", "\n", T.Position(1, 0))]
        for fim in (None, True, False):
            s.configure({"fim": fim})
            for uri, text, pos in cases:
                s.open(uri, text)
                for invoked in (False, True):
                    items = await s.inline(uri, pos, invoked=invoked)
                    for item in items:
                        assert item.range.start.line == pos.line and item.insert_text
        stats = await s.stats()
        assert stats["scheduler"]["errors"] == 0


async def test_configuration_changes_take_effect_and_bad_values_are_reported(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        s.open("file:///c.py", SOURCE)
        assert await s.inline("file:///c.py", END, invoked=True)
        s.configure({"codeparrot": {"enabled": False}})
        assert await s.inline("file:///c.py", END, invoked=True) == []
        s.configure({"codeparrot": {"enabled": True, "maxNewTokens": "many"}})
        stats = await s.stats()
        assert stats["settings"]["enabled"] is False, "a bad value must not half-apply the new settings"
        assert any("maxNewTokens" in m.message or "max_new_tokens" in m.message for m in s.client.messages)
        s.configure({"enabled": True, "maxNewTokens": 1, "tokenHealing": False})
        stats = await s.stats()
        assert stats["settings"]["enabled"] is True and stats["settings"]["max_new_tokens"] == 1
        with open(tiny_onnx_dir / "tokenizer.json", encoding="utf-8") as f:
            longest = max(len(t) for t in json.load(f)["model"]["vocab"])
        items = await s.inline("file:///c.py", END, invoked=True)
        assert all(len(i.insert_text) <= longest for i in items)
        # One token for each of the 8 samples (a check or two each, one more before each one's
        # post-processing, a few between stages): not 48 tokens x 8.
        assert record(await s.stats(), "file:///c.py")["checks"] <= 3 * 8 + 4


async def test_cancel_request_stops_decoding_mid_way_and_queued_work_is_skipped(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=LONG) as s:
        full_uri, cut_uri, queued_uri = "file:///full.py", "file:///cut.py", "file:///queued.py"
        for i, uri in enumerate((full_uri, cut_uri, queued_uri)):
            s.open(uri, SOURCE + "x" * i)
        positions = {uri: T.Position(END.line, END.character + i) for i, uri in enumerate((full_uri, cut_uri, queued_uri))}
        await s.inline(full_uri, positions[full_uri], invoked=True)
        full = record(await s.stats(), full_uri)
        assert full["outcome"] == "done" and full["checks"] > 200, full

        cut = s.inline_request(cut_uri, positions[cut_uri], invoked=True, msg_id="cut")
        queued = s.inline_request(queued_uri, positions[queued_uri], invoked=True, msg_id="queued")
        deadline = time.monotonic() + 60
        while True:          # wait until the worker is decoding the first request
            running = (await s.stats())["running"]
            if running and running["key"] == cut_uri and running["checks"] > 10:
                break
            assert time.monotonic() < deadline, "the request never started decoding"
            await asyncio.sleep(0.005)
        s.cancel("queued")
        s.cancel("cut")
        for fut in (cut, queued):
            with pytest.raises(JsonRpcException, match="cancel"):
                await asyncio.wait_for(fut, 30)
        deadline = time.monotonic() + 60
        while True:   # until the worker has accounted for every request (it may be idle in between)
            stats = await s.stats()
            sched = stats["scheduler"]
            if stats["running"] is None and sched["done"] + sched["cancelled"] + sched["skipped"] + sched["errors"] == sched["requests"]:
                break
            assert time.monotonic() < deadline, sched
            await asyncio.sleep(0.01)
        stopped, skipped = record(stats, cut_uri), record(stats, queued_uri)
        assert stopped["outcome"] == "cancelled" and stopped["reason"] == "cancelRequest", stopped
        assert stopped["checks"] < full["checks"], (stopped, full)
        assert skipped["outcome"] == "skipped" and skipped["checks"] == 0, skipped
        # The server still answers.
        assert await s.inline(full_uri, positions[full_uri], invoked=True) is not None


async def test_a_newer_request_for_the_same_document_supersedes_the_older_one(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=LONG) as s:
        s.open("file:///typing.py", SOURCE)
        first = s.inline_request("file:///typing.py", END, invoked=True)
        deadline = time.monotonic() + 60
        while not (await s.stats())["running"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        s.client.text_document_did_change(T.DidChangeTextDocumentParams(
            T.VersionedTextDocumentIdentifier(version=2, uri="file:///typing.py"),
            [T.TextDocumentContentChangePartial(range=T.Range(END, END), text="x")]))
        second = await s.inline("file:///typing.py", T.Position(END.line, END.character + 1), invoked=True)
        assert list((await asyncio.wait_for(first, 60)).items) == [], "a stale suggestion was sent"
        assert second
        stats = await s.stats()
        old = [r for r in stats["scheduler"]["recent"] if r["key"] == "file:///typing.py"][0]
        assert old["outcome"] in ("cancelled", "skipped") and old["reason"] == "changed", old


async def test_completion_items_for_clients_without_inline_completion(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), capabilities=LIST_CLIENT,
                     init={"minChars": 1, "maxNewTokens": 16}) as s:
        s.open("file:///list.py", SOURCE)
        result = await asyncio.wait_for(s.client.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier("file:///list.py"), position=END)), 60)
        assert result.is_incomplete is True
        last = SOURCE.split("\n")[-1]
        assert result.items, "greedy decoding at this position gives a suggestion with this model"
        for item in result.items:
            assert item.label_details.description == "codeparrot"
            assert item.kind == T.CompletionItemKind.Text
            assert item.sort_text.startswith("~")
            assert item.filter_text == item.text_edit.new_text
            assert_on_line(T.InlineCompletionItem(item.text_edit.new_text, range=item.text_edit.range),
                           END.line, END.character, utf16(last))
            assert item.command.command == "codeparrot.acceptCompletion"
    async with serve("--model", str(tiny_onnx_dir)) as s:   # has inline completion: no duplicate list items
        s.open("file:///list.py", SOURCE)
        result = await s.client.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier("file:///list.py"), position=END))
        assert list(result.items) == []


async def test_model_from_initialization_options_and_a_bad_one_reported_as_status(tiny_onnx_dir, tmp_path):
    async with serve(init={"model": str(tiny_onnx_dir)}) as s:
        assert s.statuses[-1].state == "ready" and s.statuses[-1].model == str(tiny_onnx_dir)
    async with serve(init={"model": str(tmp_path / "missing")}, wait=False) as s:
        assert await s.wait_status() == "error"
        assert "does not exist" in s.statuses[-1].message
        assert any(m.type == T.MessageType.Error for m in s.client.log_messages)
        s.open("file:///e.py", SOURCE)
        assert await s.inline("file:///e.py", END) == []


@pytest.mark.slow
async def test_torch_engine_and_requests_before_the_model_is_ready(tiny_checkpoint_dir):
    async with serve("--model", str(tiny_checkpoint_dir), "--engine", "torch", "--threads", "1",
                     init=SAMPLING, wait=False) as s:
        s.open("file:///t.py", SOURCE)
        early = await s.inline("file:///t.py", END, invoked=True)
        if s.statuses[-1].state == "loading":
            assert early == []
        assert await s.wait_status() == "ready" and s.statuses[-1].engine == "torch"
        assert await s.inline("file:///t.py", END, invoked=True)
        assert (await s.stats())["torchImported"] is True
