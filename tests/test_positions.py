"""The one position model (codeparrot_ls/positions.py): every LSP line break, every position
encoding, and positions that do not exist in the document."""

from __future__ import annotations

import pytest

from codeparrot_ls.positions import (UTF8, UTF16, UTF32, column_to_index, document_newline, line_start, locate,
                                     normalize_newlines, to_document_newlines, units)

LINES = ["import os", "s = 'héllo 😀 wörld'", "", "    return s  # 😀"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("encoding", [UTF8, UTF16, UTF32])
def test_every_line_break_and_encoding_gives_the_same_cursor(newline, encoding):
    source = newline.join(LINES)
    text = "\n".join(LINES)
    for line, content in enumerate(LINES):
        for index in range(len(content) + 1):
            cursor = locate(source, line, units(content[:index], encoding), encoding)
            assert cursor.text == text
            assert cursor.offset == line_start(text, line) + index
            assert cursor.line == line and cursor.character == units(content[:index], encoding)
            assert cursor.newline == newline


def test_mixed_line_breaks():
    source = "a = 1\r\nb = 2\rc = 3\nd = 4\r\ne = 5"
    assert normalize_newlines(source) == "a = 1\nb = 2\nc = 3\nd = 4\ne = 5"
    for line, name in enumerate("abcde"):
        cursor = locate(source, line, 4)
        assert cursor.text[cursor.offset - 4:cursor.offset] == f"{name} = "
    assert locate(source, 5, 0) is None
    assert document_newline(source) == "\r\n"                   # 2 of 4
    assert document_newline("a\rb\rc\nd") == "\r"
    assert document_newline("a\nb\r\nc") == "\n"                # a tie: "\n"
    assert document_newline("no break") == "\n"
    # "\r\n" split across lines is one break: "\r" then "\n" would be two.
    assert locate("x\r\n\r\ny", 2, 1).offset == len("x\n\ny")


def test_code_units_of_non_bmp_characters():
    line = "s = 'héllo 😀 wörld'"
    emoji = line.index("😀")
    w = line.index("w")
    assert units(line[:w], UTF16) == w + 1                       # 😀 = 2 UTF-16 units
    assert units(line[:w], UTF8) == w + 4                        # é 2 bytes, 😀 4 bytes
    assert units(line[:w], UTF32) == w
    assert column_to_index(line, w + 1, UTF16) == w
    assert column_to_index(line, w + 4, UTF8) == w
    # Inside a character: its start (the client cannot put a cursor there; an index can't either).
    assert column_to_index(line, emoji + 1, UTF16) == emoji
    assert column_to_index(line, units(line[:emoji], UTF8) + 2, UTF8) == emoji


def test_positions_outside_the_document_are_clamped_or_have_no_cursor():
    source = "a = 1\r\n😀 = 2\r\n\r\nlast"
    assert locate(source, 0, 0).offset == 0
    end_of_first = locate(source, 0, 500)
    assert (end_of_first.offset, end_of_first.character) == (5, 5)   # LSP: past the end = the end
    assert locate(source, 0, -3).offset == 0
    assert locate(source, 1, 1).offset == locate(source, 1, 0).offset   # inside the emoji
    assert locate(source, 3, 4).offset == len(normalize_newlines(source))
    assert locate(source, 3, 9).character == 4
    for line in (4, 10_000, -1):
        assert locate(source, line, 0) is None
    # Empty and whitespace-only documents have a line 0 (and a line 1 after a final break).
    assert locate("", 0, 0).offset == 0 and locate("", 1, 0) is None
    assert locate("   \n", 1, 0).offset == 4 and locate("   \n", 0, 9).offset == 3


def test_line_start_over_long_documents():
    text = "x\n" * 200_000 + "end"
    assert line_start(text, 200_000) == len(text) - 3
    assert line_start(text, 123_456) == 2 * 123_456
    assert line_start(text, 200_001) is None
    assert line_start("\n" * 70_000, 70_000) == 70_000       # past a chunk made only of breaks


def test_suggestions_take_the_document_line_break():
    assert to_document_newlines("a\nb\n", "\r\n") == "a\r\nb\r\n"
    assert to_document_newlines("a\nb", "\r") == "a\rb"
    assert to_document_newlines("a\r\nb\rc", "\n") == "a\nb\nc"   # whatever the model wrote
    assert to_document_newlines("a\r\nb", "\r\n") == "a\r\nb"
