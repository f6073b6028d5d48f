"""The JSON-RPC side of the server (`codeparrot_ls.server`), on top of pygls:

- every message gets an answer or is dropped on purpose: a frame that cannot be read gets a
  parse error, a batch or a message that is not JSON-RPC 2.0 gets InvalidRequest, params that do
  not fit the LSP schema get InvalidParams (pygls on its own logs these and never answers);
- the LSP lifecycle: requests before `initialize` get ServerNotInitialized, a second
  `initialize` and any request after `shutdown` get InvalidRequest, `exit` ends the session with
  code 0 after `shutdown` and 1 without;
- no error reply carries a traceback or exception text (they show paths and code): the log
  keeps them;
- documents split lines at LSP's line breaks only.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument

from codeparrot_ls.framing import Frame, Malformed, top_level_fields
from codeparrot_ls.positions import UTF32, encoding_name, line_start, units

log = logging.getLogger(__name__)

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002


class CodeparrotProtocol(LanguageServerProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initialize_seen = False
        self.exit_code: int | None = None        # set when the session must end (`exit`, refused)
        # Called with `initialize`'s params before the server sees them; returns why it is
        # refused, or None. The TCP transport checks the shared secret here.
        self.admit: Callable[[types.InitializeParams], str | None] | None = None
        self._last_frame_failed = False

    # -- bytes -> messages ----------------------------------------------------------------------
    def receive(self, event: Frame | Malformed) -> None:
        """One event from the framing layer: answer what cannot be handled, handle the rest."""
        if isinstance(event, Malformed):
            if not (event.follows_frame and self._last_frame_failed):   # the same broken frame
                self.reply_error(_id_in(event.body), PARSE_ERROR, f"malformed frame: {event.reason}")
            return
        self._last_frame_failed = False
        try:
            data = json.loads(event.body)
        except RecursionError:
            self.reply_error(_id_in(event.body), INVALID_REQUEST, "the message is nested too deeply to read")
            return
        except ValueError as exc:
            self._last_frame_failed = True
            self.reply_error(_id_in(event.body), PARSE_ERROR, f"the message is not valid JSON: {exc}")
            return
        if isinstance(data, list):
            ids = [m.get("id") for m in data if isinstance(m, dict) and "method" in m and _valid_id(m.get("id"))]
            for msg_id in ids or [None]:
                self.reply_error(msg_id, INVALID_REQUEST, "batch messages are not part of LSP: send one message per frame")
            return
        problem = _envelope_problem(data)
        if problem is not None:
            self.reply_error(*problem)
            return
        if data.get("method") == types.EXIT:
            self.end()                   # whatever its params: exit must always work
            return
        try:
            message = self.structure_message(data)
        except RecursionError:
            self.reply_error(_reply_id(data), INVALID_REQUEST, "the message is nested too deeply to read")
            return
        except JsonRpcException as exc:
            log.warning("dropped a %s that does not fit the LSP schema: %s",
                        data.get("method", "response"), exc)
            return
        self.handle_message(message)

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "method" in data and "id" in data:
                return _BadRequest(data["id"], data["method"], exc)
            raise

    # -- the lifecycle --------------------------------------------------------------------------
    def handle_message(self, message):
        method = getattr(message, "method", None)
        request_id = getattr(message, "id", None) if method is not None else None
        if method == types.EXIT:
            self.end()
        elif self._shutdown:
            if request_id is not None:
                self.reply_error(request_id, INVALID_REQUEST, f"{method}: the server is shut down; only exit is accepted")
        elif not self.initialize_seen and method not in (None, types.INITIALIZE):
            if request_id is not None:      # notifications are dropped (LSP)
                self.reply_error(request_id, SERVER_NOT_INITIALIZED, f"{method}: send initialize first")
        elif isinstance(message, _BadRequest):
            log.warning("malformed params for %s (request %s)", message.method, message.id)
            error = JsonRpcInvalidParams(f"malformed params for {message.method}")
            self._send_response(message.id, None, error.to_response_error())
        elif method != types.INITIALIZE or self._initialize_allowed(message):
            super().handle_message(message)

    def _initialize_allowed(self, message) -> bool:
        if self.initialize_seen:
            # pygls would make a new workspace: every open document would be lost.
            self.reply_error(message.id, INVALID_REQUEST, "initialize may be sent only once; the session goes on")
            return False
        refusal = self.admit(message.params) if self.admit is not None else None
        if refusal is not None:
            log.warning("initialize refused: %s", refusal)
            self.reply_error(message.id, INVALID_REQUEST, refusal, data={"retry": False})
            self.exit_code = 1
            return False
        self.initialize_seen = True
        return True

    def end(self) -> None:
        """`exit`: the transport ends the session; the process exit code is LSP's."""
        self.exit_code = 0 if self._shutdown else 1
        log.info("exit %s shutdown: ending the session", "after" if self._shutdown else "without")

    # -- answers ----------------------------------------------------------------------------------
    def reply_error(self, msg_id, code: int, message: str, data: Any = None) -> None:
        """An error reply; `msg_id` None gives `"id": null` (the JSON-RPC answer to an unreadable message)."""
        log.warning("error reply to %s: %s (%d)", msg_id, message, code)
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self._send_data({"jsonrpc": self.VERSION, "id": msg_id, "error": error})

    def _send_response(self, msg_id, result=None, error: types.ResponseError | None = None):
        if error is not None and (error.data is not None or error.code == INTERNAL_ERROR):
            # pygls puts the traceback in `data` and the exception's text in `message`.
            log.error("request %s failed: %s\n%s", msg_id, error.message, _traceback_text(error.data))
            message = "internal error; the server log has the details" if error.code == INTERNAL_ERROR else error.message
            error = types.ResponseError(code=error.code, message=message)
        super()._send_response(msg_id, result, error)


def _valid_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _reply_id(data: dict):
    """The id to answer a bad message with: a request's own, else null."""
    return data.get("id") if "method" in data and _valid_id(data.get("id")) else None


def _id_in(body: bytes):
    """A request's id read from a body that does not parse (truncated, too deep); else None."""
    return _reply_id(top_level_fields(body)) if body else None


def _envelope_problem(data) -> tuple[Any, int, str] | None:
    if not isinstance(data, dict):
        return None, INVALID_REQUEST, "a message must be a JSON object"
    if data.get("jsonrpc") != "2.0":
        return _reply_id(data), INVALID_REQUEST, 'the message lacks "jsonrpc": "2.0"'
    if "method" in data:
        if not isinstance(data["method"], str):
            return None, INVALID_REQUEST, "method must be a string"
        if "id" in data and not _valid_id(data["id"]):
            return None, INVALID_REQUEST, "id must be an integer or a string"
        return None
    if "id" in data and (_valid_id(data["id"]) or data["id"] is None) and ("result" in data) != ("error" in data):
        return None                      # a response to one of the server's requests
    return None, INVALID_REQUEST, "neither a request, a notification nor a response"


def _traceback_text(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("traceback"), list):
        return "".join(str(line) for line in data["traceback"])
    return "" if data is None else str(data)


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
