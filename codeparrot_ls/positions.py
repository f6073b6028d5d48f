"""The one position model: an LSP position becomes a code-point offset, once, at the edge.

LSP documents may break lines with "\\n", "\\r\\n" or "\\r" (mixed in one document, too),
and columns count code units of the encoding negotiated at initialize (UTF-16 unless
client and server agreed on UTF-8 or UTF-32). The server converts the client's position
with `locate`, which also gives the document with every line break written "\\n": the
completion pipeline (context, cache, post-processing) works only on that text and that
offset, the way the model saw code in training. Suggestions go back through
`to_document_newlines`, so accepting one never mixes line endings.

Positions that do not exist are answered, not refused: a column past the end of its line
is the end of the line (as LSP says), one inside a character (between the two UTF-16
halves of an emoji) is the start of that character, a negative one is 0, and a line past
the end of the document has no cursor (`locate` gives None: an empty answer).
"""

from __future__ import annotations

from dataclasses import dataclass

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
_CHUNK = 1 << 16   # line starts are found by counting "\n" a chunk at a time (C speed)


@dataclass(frozen=True)
class Cursor:
    text: str        # the document, every line break written "\n"
    offset: int      # code points into `text`
    line: int
    character: int   # the column in the client's code units (clamped into the line)
    newline: str     # the document's line break (`document_newline`)


def normalize_newlines(text: str) -> str:
    """`text` with every LSP line break ("\\r\\n", "\\r", "\\n") written "\\n"."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def to_document_newlines(text: str, newline: str) -> str:
    """Text for the document: its line breaks (any kind) written `newline`."""
    text = normalize_newlines(text)
    return text if newline == "\n" else text.replace("\n", newline)


def document_newline(source: str) -> str:
    """The document's line break: the most common kind ("\\n" on a tie or with none), as
    VS Code decides a file's end of line; in a mixed document suggestions follow the most."""
    if "\r" not in source:
        return "\n"
    crlf = source.count("\r\n")
    counts = {"\n": source.count("\n") - crlf, "\r\n": crlf, "\r": source.count("\r") - crlf}
    best = max(counts.values())
    return next(k for k, v in counts.items() if v == best)


def line_start(text: str, line: int) -> int | None:
    """Offset where `line` starts in "\\n"-text, or None past the last line."""
    if line <= 0:
        return 0 if line == 0 else None
    pos, left = 0, line
    while True:
        end = min(pos + _CHUNK, len(text))
        n = text.count("\n", pos, end)
        if n >= left:
            break
        if end == len(text):
            return None
        pos, left = end, left - n
    for _ in range(left):
        pos = text.index("\n", pos) + 1
    return pos


def units(s: str, encoding: str) -> int:
    """Length of `s` in code units of `encoding`."""
    if encoding == UTF32 or s.isascii():
        return len(s)
    if encoding == UTF8:
        return len(s.encode("utf-8", "surrogatepass"))
    # Characters outside the Basic Multilingual Plane take two UTF-16 code units.
    return len(s) + sum(1 for c in s if ord(c) > 0xFFFF)


def column_to_index(line: str, column: int, encoding: str) -> int:
    """Index into `line` (code points) of a column in `encoding` code units, clamped: past
    the end is the end, inside a character is its start, negative is 0."""
    if column <= 0:
        return 0
    if encoding == UTF32 or line.isascii():
        return min(column, len(line))
    count = 0
    for index, char in enumerate(line):
        count += units(char, encoding)
        if count > column:
            return index
    return len(line)


def locate(source: str, line: int, character: int, encoding: str = UTF16) -> Cursor | None:
    """The cursor at the client's (line, character) in `source`, or None when the document
    has no such line."""
    text = normalize_newlines(source)
    start = line_start(text, line)
    if start is None:
        return None
    end = text.find("\n", start)
    # The line up to the column only (a column counts at least as many code units as
    # characters): a request near the start of a 10 MB line copies none of it.
    line_text = text[start:min(len(text) if end < 0 else end, start + max(character, 0))]
    index = column_to_index(line_text, character, encoding)
    return Cursor(text, start + index, line, units(line_text[:index], encoding), document_newline(source))


def encoding_name(kind) -> str:
    """The negotiated `PositionEncodingKind` (or None = the LSP default) as a codec name."""
    value = getattr(kind, "value", kind)
    return {"utf-8": UTF8, "utf-32": UTF32}.get(value, UTF16)
