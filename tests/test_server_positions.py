"""Positions and line breaks through the real server: every LSP line break (\\n, \\r\\n, \\r,
mixed), every position encoding, non-BMP characters, and cursors anywhere - empty and
whitespace-only files, line 0 character 0, the last line without a line break, positions past
the end - answered with a suggestion or an empty result, never an error."""

from __future__ import annotations

import pytest
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException

from conftest import EDITED, MISSING_LINE
from test_server import SAMPLING, serve, utf16

# The memorized model's suggestion at the end of the line before the missing one.
# No snippets from the other open documents: every document gets the same prompt.
MEMORIZED = {"maxNewTokens": 24, "timeBudgetMs": 10_000, "fim": False, "otherFilesTokens": 0}
CURSOR = T.Position(MISSING_LINE - 1, len(EDITED.split("\n")[MISSING_LINE - 1]))


def mixed(text: str) -> str:
    """`text` with its line breaks cycling through \\n, \\r and \\r\\n (in this order a "\\r"
    is never followed by a "\\n": the two would be one break)."""
    lines = text.split("\n")
    breaks = ["\n", "\r", "\r\n"]
    return "".join(line + breaks[i % 3] for i, line in enumerate(lines[:-1])) + lines[-1]


async def test_every_line_break_gives_the_same_suggestion_in_the_document_line_break(memorized_model_dir):
    async with serve("--model", str(memorized_model_dir), init=MEMORIZED) as s:
        s.open("file:///lf.py", EDITED)
        [item] = await s.inline("file:///lf.py", CURSOR)
        assert "\n" in item.insert_text and "total += len(lines)" in item.insert_text
        assert "\r" not in item.insert_text
        for name, newline in (("crlf", "\r\n"), ("cr", "\r")):
            uri = f"file:///{name}.py"
            s.open(uri, EDITED.replace("\n", newline))
            [other] = await s.inline(uri, CURSOR)
            # Accepting it keeps the document's line break: no "\n" alone enters a "\r\n" file.
            assert other.insert_text == item.insert_text.replace("\n", newline)
            assert other.range == item.range == T.Range(CURSOR, CURSOR)
        # Mixed: the same text, written with the most common break ("\n", 7 of 20).
        s.open("file:///mixed.py", mixed(EDITED))
        [other] = await s.inline("file:///mixed.py", CURSOR)
        assert other.insert_text == item.insert_text
        # The list-completion path too (a client without inline completion gets the same edit).
        assert (await s.stats())["scheduler"]["errors"] == 0


async def test_completion_items_use_the_document_line_break(memorized_model_dir):
    caps = T.ClientCapabilities(text_document=T.TextDocumentClientCapabilities(completion=T.CompletionClientCapabilities()))
    async with serve("--model", str(memorized_model_dir), capabilities=caps, init=MEMORIZED) as s:
        s.open("file:///crlf.py", EDITED.replace("\n", "\r\n"))
        result = await s.client.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier("file:///crlf.py"), position=CURSOR))
        [item] = result.items
        assert "\r\n" in item.text_edit.new_text and "\n" not in item.text_edit.new_text.replace("\r\n", "")
        assert item.filter_text == item.text_edit.new_text


@pytest.mark.parametrize("encoding", [None, T.PositionEncodingKind.Utf8, T.PositionEncodingKind.Utf32])
async def test_non_bmp_characters_in_every_position_encoding_and_line_break(tiny_onnx_dir, encoding):
    general = T.GeneralClientCapabilities(position_encodings=[encoding]) if encoding else None
    caps = T.ClientCapabilities(general=general, text_document=T.TextDocumentClientCapabilities(
        inline_completion=T.InlineCompletionClientCapabilities()))
    size = {None: utf16, T.PositionEncodingKind.Utf8: lambda t: len(t.encode("utf-8")),
            T.PositionEncodingKind.Utf32: len}[encoding]
    last = 'label = "é😀" + name.'
    async with serve("--model", str(tiny_onnx_dir), capabilities=caps, init={**SAMPLING, "maxNewTokens": 4}) as s:
        assert s.init_result.capabilities.position_encoding == (encoding or T.PositionEncodingKind.Utf16)
        for k, newline in enumerate(("\n", "\r\n", "\r")):
            uri = f"file:///u{k}.py"
            s.open(uri, f"name = '🐍'{newline}{newline}{last}")
            end, emoji = size(last), size(last[:last.index("😀")])
            # Past the end: the end. Inside the emoji (UTF-16, UTF-8): its start; UTF-32 has no inside.
            inside = emoji if size("😀") > 1 else emoji + 1
            for character, at in ((end, end), (end + 7, end), (emoji + 1, inside)):
                items = await s.inline(uri, T.Position(2, character), invoked=True)
                for item in items:
                    assert item.range == T.Range(T.Position(2, at), T.Position(2, at))
            assert await s.inline(uri, T.Position(3, 0)) == []               # no such line
        assert (await s.stats())["scheduler"]["errors"] == 0


@pytest.mark.parametrize("fim", [True, False])
async def test_any_cursor_gets_an_answer(tiny_onnx_dir, fim):
    documents = {"empty": "", "blank": "   \n\t\n  ", "newline": "\n", "crlf": "\r\n\r\n",
                 "no-final-break": "import os\nx = os.getcwd()", "final-break": "import os\nx = 1\n"}
    async with serve("--model", str(tiny_onnx_dir), init={"fim": fim, "minChars": 1, "maxNewTokens": 4}) as s:
        for name, text in documents.items():
            uri = f"file:///{name}.py"
            s.open(uri, text)
            lines = text.replace("\r\n", "\n").split("\n")
            cursors = [(0, 0), (0, len(lines[0])), (len(lines) - 1, 0), (len(lines) - 1, len(lines[-1])),
                       (0, 1000), (len(lines), 0), (10_000, 10_000)]
            for line, character in cursors:
                for invoked in (False, True):
                    items = await s.inline(uri, T.Position(line, character), invoked=invoked)
                    if line >= len(lines):
                        assert items == []
                    for item in items:
                        assert item.range.start.line == line
                        assert item.range.start.character == min(character, len(lines[line]))
        # Negative numbers do not fit the LSP schema (uinteger): InvalidParams, not an internal error.
        with pytest.raises(JsonRpcException, match="malformed params"):
            await s.send_raw(T.TEXT_DOCUMENT_INLINE_COMPLETION, {
                "textDocument": {"uri": "file:///empty.py"}, "position": {"line": -1, "character": -1},
                "context": {"triggerKind": 1}}, "negative")
        stats = await s.stats()
        assert stats["scheduler"]["errors"] == 0, stats["scheduler"]
        assert stats["completer"]["requests"] > 0
