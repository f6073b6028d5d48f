"""Shown / accepted / partially accepted suggestions, counted by the real server from the
Copilot-compatible notifications and the accept command (the Neovim test sends them from a real
editor: tests/test_neovim.py)."""

from __future__ import annotations

from lsprotocol import types as T

from test_server import END, SAMPLING, SOURCE, serve


async def test_shown_accepted_and_partially_accepted_are_counted_locally(tiny_onnx_dir):
    async with serve("--model", str(tiny_onnx_dir), init=SAMPLING) as s:
        s.open("file:///work/a.py", SOURCE)
        stats = await s.stats()
        assert (stats["shown"], stats["accepted"], stats["partiallyAccepted"]) == (0, 0, 0)
        assert stats["acceptanceRate"] is None
        items = await s.inline("file:///work/a.py", END, invoked=True)
        assert items
        item = T.InlineCompletionItem(insert_text="x = 😀 + 1\ny", range=items[0].range, command=items[0].command)
        notify = s.client.protocol.notify
        raw = s.client.protocol._converter.unstructure(item)
        for _ in range(4):
            notify("textDocument/didShowCompletion", {"item": raw})
        notify("textDocument/didPartiallyAcceptCompletion", {"item": raw, "acceptedLength": 2})
        notify("textDocument/didPartiallyAcceptCompletion", {"item": raw, "acceptedLength": 500})  # at most all of it
        # Not a partial accept: logged and not counted; the server goes on.
        for bad in (-1, "2", None, 1.5):
            notify("textDocument/didPartiallyAcceptCompletion", {"item": raw, "acceptedLength": bad})
        await s.command("codeparrot.acceptCompletion", *items[0].command.arguments)
        stats = await s.stats()
        assert stats["shown"] == 4 and stats["accepted"] == 1 and stats["partiallyAccepted"] == 2
        assert stats["partiallyAcceptedChars"] == 2 + 12        # the emoji is two UTF-16 units
        assert stats["acceptanceRate"] == 0.25
        assert await s.inline("file:///work/a.py", END, invoked=True) is not None
