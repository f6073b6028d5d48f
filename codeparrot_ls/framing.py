"""LSP base-protocol framing (`Content-Length: N` headers, then N bytes of JSON) that survives
malformed frames.

`FrameParser` turns a byte stream into `Frame`s (a body to decode) and `Malformed` events (a
frame that cannot be read: the server answers a parse error). It never gets stuck: after a bad
header, a length too small or too large, or bytes that are no frame at all, it resynchronises on
the next `Content-Length` header. That works because a header line ends in a raw line break,
which valid JSON can only hold between tokens, never after a bare word: a `Content-Length: N`
line inside a body means the declared length ran past the end of its message.

No I/O here: the transport feeds bytes in and hands the events to the protocol.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_BODY = 512 * 1024 * 1024        # a declared length above this is refused, not buffered
MAX_HEADER = 64 * 1024              # bytes without a header block end before they count as garbage
_MAX_DIGITS = 12

# Lenient where that costs nothing: any case, optional blanks, bare \n line breaks.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*([^\r\n]*?)[ \t]*(?:\r?\n|$)", re.I)
_LENGTH_IN_BODY = re.compile(rb"content-length[ \t]*:[ \t]*[0-9-]*[ \t]*\r?\n", re.I)
_HEADER_LINE = re.compile(rb"[A-Za-z0-9-]+[ \t]*:[^\r\n]*")
# The start of a Content-Length line cut off by the end of the input so far.
_PARTIAL_LENGTH = re.compile(rb"c(?:o(?:n(?:t(?:e(?:n(?:t(?:-(?:l(?:e(?:n(?:g(?:t(?:h[ \t]*(?::[ \t]*[0-9-]*[ \t]*\r?)?)?"
                             rb")?)?)?)?)?)?)?)?)?)?)?)?\Z", re.I)
_TAIL = 40                          # longer than any header start worth waiting for


@dataclass
class Frame:
    body: bytes


@dataclass
class Malformed:
    reason: str
    body: bytes = b""               # what there was of the message, to find its id in
    follows_frame: bool = False     # garbage right after a frame: most likely that frame's tail


class FrameParser:
    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._length: int | None = None      # the body being read, None while reading headers
        self._scanned = 0                    # body bytes already searched for a header
        self._quiet = False                  # garbage after a reported error is not reported again
        self._after_frame = False            # the last thing read was a whole frame
        self._fresh = False                  # bytes arrived since the last `stale` call
        self._declared = 0

    def feed(self, data: bytes) -> list[Frame | Malformed]:
        self._buf += data
        self._fresh = True
        events: list[Frame | Malformed] = []
        while self._step(events):
            pass
        return events

    def waiting_for_body(self) -> bool:
        return self._length is not None and len(self._buf) > 0

    def stale(self) -> list[Malformed]:
        """Input paused in the middle of a body: if what came is a whole JSON message, the declared
        length was too large (the client is waiting for an answer that would never come)."""
        if self._length is None or not self._buf or not self._fresh:
            return []
        self._fresh = False
        try:
            json.loads(bytes(self._buf))
        except (ValueError, RecursionError):
            return []
        body = bytes(self._buf)
        self._reset_after_error()
        self._buf.clear()
        return [Malformed(f"Content-Length {self._declared} but the message has {len(body)} bytes", body)]

    # -- the state machine ----------------------------------------------------------------------
    def _step(self, events: list) -> bool:
        return self._body(events) if self._length is not None else self._header(events)

    def _header(self, events: list) -> bool:
        buf = self._buf
        end = _HEADER_END.search(buf)
        if end is None:
            if len(buf) > MAX_HEADER:
                last = bytes(buf).lower().rfind(b"content-length")
                self._garbage(events, last if last > 0 else len(buf) - _TAIL)
            return False
        block = bytes(buf[:end.start()])
        found = list(_LENGTH.finditer(block))
        if not found:
            if block.strip():
                self._garbage(events, end.end(), "a header without Content-Length"
                              if not _has_garbage(block + b"\n") else "bytes outside any frame")
            else:
                del buf[:end.end()]          # blank lines between frames
            return True
        length = found[-1]
        if _has_garbage(block[:length.start()]):
            self._garbage(events, length.start())
            return True
        del buf[:end.end()]
        value = length.group(1)
        if not value.isdigit() or len(value) > _MAX_DIGITS:
            return self._bad_header(events, f"bad Content-Length {value[:20]!r}")
        n = int(value)
        if n == 0:
            return self._bad_header(events, "Content-Length 0: an empty message")
        if n > self.max_body:
            return self._bad_header(events, f"Content-Length {n} is over the {self.max_body}-byte limit")
        self._length, self._declared, self._scanned = n, n, 0
        self._quiet = False
        return True

    def _body(self, events: list) -> bool:
        buf, n = self._buf, self._length
        # Search only what was not searched before (with an overlap for a header cut in two).
        start = max(0, self._scanned - _TAIL)
        inner = _LENGTH_IN_BODY.search(buf, start, min(len(buf), n + _TAIL))
        self._scanned = min(len(buf), n)
        if inner is not None and inner.start() < n:
            body = bytes(buf[:inner.start()])
            del buf[:inner.start()]
            self._reset_after_error()
            events.append(Malformed(f"Content-Length {n} runs into the next message", body))
            return True
        if len(buf) < n:
            return False
        if _header_cut_off(buf, n):
            return False                     # wait: perhaps the length ran past the body into a header
        events.append(Frame(bytes(buf[:n])))
        del buf[:n]
        self._length = None
        self._after_frame = True
        return True

    def _garbage(self, events: list, upto: int, reason: str = "bytes outside any frame") -> None:
        dropped = bytes(self._buf[:upto])
        del self._buf[:upto]
        if not self._quiet and dropped.strip():
            events.append(Malformed(reason, dropped, follows_frame=self._after_frame))
        self._quiet = True
        self._after_frame = False

    def _bad_header(self, events: list, reason: str) -> bool:
        events.append(Malformed(reason))
        self._quiet = True                   # its body, if any, follows as garbage
        self._after_frame = False
        return True

    def _reset_after_error(self) -> None:
        self._length = None
        self._quiet = True
        self._after_frame = False


def _has_garbage(prefix: bytes) -> bool:
    """Whether the text before a Content-Length header is something other than header lines."""
    if not prefix:
        return False
    lines = re.split(rb"\r?\n", prefix)
    if lines[-1]:
        return True                          # the header starts mid-line
    return any(not _HEADER_LINE.fullmatch(line) for line in lines[:-1])


def _header_cut_off(buf: bytearray, n: int) -> bool:
    """Whether the input ends with the start of a Content-Length line that began inside the body."""
    if len(buf) >= n + _TAIL:
        return False
    tail_from = max(0, n - _TAIL)
    cut = _PARTIAL_LENGTH.search(bytes(buf[tail_from:]))
    return cut is not None and tail_from + cut.start() < n


# -- finding a broken message's id ------------------------------------------------------------------
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[{}\[\]:,]|[^\s{}\[\]:,"]++|\s++', re.S)
_SCAN_LIMIT = 1 << 20


def top_level_fields(body: bytes) -> dict:
    """The scalar members of a JSON object, read from its first megabyte without recursion: works
    on a truncated body and on one nested too deeply for `json.loads`."""
    depth, key, want_value, out = 0, None, False, {}
    for m in _TOKEN.finditer(body, 0, min(len(body), _SCAN_LIMIT)):
        tok = m.group()
        if tok.isspace():
            continue
        if depth == 0 and tok != b"{":
            break
        if tok in (b"{", b"["):
            depth += 1
            want_value = False
        elif tok in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                break
        elif depth != 1:
            continue
        elif tok == b":":
            want_value = key is not None
        elif tok == b",":
            key, want_value = None, False
        else:
            try:
                value = json.loads(tok)
            except ValueError:
                value = None
            if want_value and isinstance(key, str):
                out.setdefault(key, value)
                key, want_value = None, False
            elif isinstance(value, str):
                key = value
    return out
