"""The text around the cursor that the post-processing rules look at, and the measures of
a line they share (indentation, open brackets, a block opener)."""

from __future__ import annotations

from dataclasses import dataclass, field

CONTEXT_LINES_BEFORE = 60
CONTEXT_LINES_AFTER = 8
CLOSERS = ")]}"
OPENERS = "([{"


@dataclass
class CursorContext:
    """The text around the cursor that the rules look at."""

    line_prefix: str                   # the cursor's line before the cursor
    line_suffix: str                   # the cursor's line after the cursor
    lines_before: list[str] = field(default_factory=list)   # lines above, nearest last
    lines_after: list[str] = field(default_factory=list)    # lines below, nearest first

    @classmethod
    def from_document(cls, text: str, offset: int) -> "CursorContext":
        start = text.rfind("\n", 0, offset) + 1
        end = text.find("\n", offset)
        end = len(text) if end < 0 else end
        before, p = [], start
        while p > 0 and len(before) < CONTEXT_LINES_BEFORE:
            s = text.rfind("\n", 0, p - 1) + 1
            before.append(text[s:p - 1])
            p = s
        after, p = [], end
        while p < len(text) and len(after) < CONTEXT_LINES_AFTER:
            e = text.find("\n", p + 1)
            e = len(text) if e < 0 else e
            after.append(text[p + 1:e])
            p = e
        return cls(text[start:offset], text[offset:end], before[::-1], after)

    @property
    def mid_line(self) -> bool:
        """Non-whitespace text follows the cursor on its line."""
        return bool(self.line_suffix.strip())


def indent_width(line: str) -> int:
    ws = line[:len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(8))


def bracket_depth(text: str, depth: int = 0) -> int:
    """Net open brackets after `text` (strings and comments are not parsed: a heuristic)."""
    return depth + sum(map(text.count, OPENERS)) - sum(map(text.count, CLOSERS))


def opens_block(line: str) -> bool:
    code = line.split("#", 1)[0].rstrip()
    return code.endswith(":")
