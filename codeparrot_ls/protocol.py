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


def lsp_text_document(workspace, doc_uri, source=None, version=None, language_id=None):
    return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                           sync_kind=workspace._sync_kind, position_codec=workspace.position_codec)
