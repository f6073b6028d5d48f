"""Two adjustments to pygls for the server (`codeparrot_ls.server`): a request whose params do
not fit the LSP schema gets an InvalidParams answer, and documents split lines at LSP's line
breaks only."""

from __future__ import annotations

import logging
import re
from typing import Any

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument

from codeparrot_ls.positions import UTF32, encoding_name, line_start, units

log = logging.getLogger(__name__)

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class CodeparrotProtocol(LanguageServerProtocol):
    """Answers a request whose params do not fit the LSP schema with InvalidParams.

    (pygls on its own logs such a request and never answers it, leaving the
    editor waiting.)
    """

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "jsonrpc" in data and "method" in data and "id" in data:
                return _BadRequest(data["id"], data["method"], exc)
            raise

    def handle_message(self, message):
        if isinstance(message, _BadRequest):
            log.warning("malformed params for %s (request %s)", message.method, message.id)
            error = JsonRpcInvalidParams(f"malformed params for {message.method}")
            self._send_response(message.id, None, error.to_response_error())
            return
        super().handle_message(message)


class _BadRequest:
    jsonrpc = LanguageServerProtocol.VERSION

    def __init__(self, id_, method: str, error: Exception):
        self.id, self.method, self.error = id_, method, error


class LspTextDocument(TextDocument):
    """pygls' document with LSP's line breaks (\n, \r\n, \r) only.

    pygls splits lines with str.splitlines, which also breaks at form feeds, \x0b, \x1c-\x1e,
    \x85, U+2028 and U+2029: an incremental edit below such a character lands on the wrong
    line. Python files do contain form feeds.
    """

    @property
    def lines(self):
        return tuple(_LINE.findall(self.source))

    def _apply_incremental_change(self, change) -> None:
        """The edit spliced in at two offsets. (pygls splits the whole document into lines
        and walks the edited line character by character: seconds per keystroke on a 2 MB line.)"""
        text = self.source
        if "\r" in text:       # (line starts below are found in "\n"-text)
            super()._apply_incremental_change(change)
            return
        encoding = encoding_name(self.position_codec.encoding)
        start = _client_offset(text, change.range.start, encoding)
        end = max(start, _client_offset(text, change.range.end, encoding))
        self._source = text[:start] + change.text + text[end:]


def _client_offset(text: str, position, encoding: str) -> int:
    """str index in "\\n"-text of a client position, as pygls reads one: a line past the end
    is the end of the document, a column past the end of its line the end of the line, a
    column inside a character the end of that character."""
    start = line_start(text, position.line)
    if start is None:
        return len(text)
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    # A column counts at least as many code units as characters: read no further.
    seg = text[start:min(end, start + max(position.character, 0))]
    if encoding == UTF32 or seg.isascii():
        return start + len(seg)
    count = 0
    for i, ch in enumerate(seg):
        if count >= position.character:
            return start + i
        count += units(ch, encoding)
    return start + len(seg)


def lsp_text_document(workspace, doc_uri, source=None, version=None, language_id=None):
    return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                           sync_kind=workspace._sync_kind, position_codec=workspace.position_codec)
