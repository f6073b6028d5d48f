"""LSP positions: lines and columns in the client's code units.

LSP counts columns in UTF-16 code units unless client and server agree on
another encoding at initialize. The completion pipeline always works in UTF-16
(`Completer.complete` takes and returns UTF-16 columns); these helpers check a
client position against the document and convert columns between encodings.
"""

from __future__ import annotations

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"


class PositionError(ValueError):
    """A position that does not exist in the document."""


def split_lines(text: str) -> list[str]:
    """The document's lines without their line endings (LSP line breaks: \\n, \\r\\n, \\r).

    A document ending in a line break has one more, empty line: the cursor can sit there.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def units(s: str, encoding: str) -> int:
    """Length of `s` in code units of `encoding`."""
    if encoding == UTF32:
        return len(s)
    if s.isascii():
        return len(s)
    if encoding == UTF8:
        return len(s.encode("utf-8", "surrogatepass"))
    # Characters outside the Basic Multilingual Plane take two UTF-16 code units.
    return len(s) + sum(1 for c in s if ord(c) > 0xFFFF)


def column_to_index(line: str, column: int, encoding: str) -> int:
    """Index into `line` (code points) of a column in `encoding` code units.

    Raises PositionError when the column is past the end of the line or falls
    inside one character (e.g. between the two UTF-16 halves of an emoji).
    """
    if column < 0:
        raise PositionError(f"negative column {column}")
    if encoding == UTF32 or line.isascii():
        if column > len(line):
            raise PositionError(f"column {column} is past the end of the line ({len(line)} characters)")
        return column
    count = 0
    for index, char in enumerate(line):
        if count == column:
            return index
        count += units(char, encoding)
        if count > column:
            raise PositionError(f"column {column} falls inside the character {char!r}")
    if count == column:
        return len(line)
    raise PositionError(f"column {column} is past the end of the line ({count} {encoding} code units)")


def convert_column(line: str, column: int, source: str, target: str) -> int:
    """A column in `source` code units, expressed in `target` code units."""
    if source == target:
        return column
    return units(line[: column_to_index(line, column, source)], target)


def check_position(lines: list[str], line: int, column: int, encoding: str) -> int:
    """Validate a client position; returns the index (code points) of the column in its line."""
    if line < 0 or line >= len(lines):
        raise PositionError(f"line {line} is past the end of the document ({len(lines)} lines)")
    return column_to_index(lines[line], column, encoding)


def encoding_name(kind) -> str:
    """The negotiated `PositionEncodingKind` (or None = the LSP default) as a codec name."""
    value = getattr(kind, "value", kind)
    return {"utf-8": UTF8, "utf-32": UTF32}.get(value, UTF16)
