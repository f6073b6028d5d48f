"""Rules on where a suggestion ends: at its line when the cursor is mid-line, at the end of
the cursor's block, before it repeats the code after the cursor, before a loop at its end,
and without trailing whitespace."""

from __future__ import annotations

import re

from codeparrot_ls.postprocess.cursor import CursorContext, bracket_depth, indent_width, opens_block

_CONTINUATION = ("else", "elif", "except", "finally")


def keep_single_line(text: str, ctx: CursorContext, single_line: bool = False) -> str:
    """Only the first line when the cursor is mid-line (or single-line mode is on)."""
    if single_line or ctx.mid_line:
        return text.split("\n", 1)[0]
    return text


def _may_continue(line: str, complete: bool = True) -> bool:
    """The line starts with `else` / `elif` / `except` / `finally` (for a line still being
    written: it still may, its first word being unfinished)."""
    code = line.lstrip()
    word = code.split(" ", 1)[0]
    if complete or " " in code:
        return word.rstrip(":") in _CONTINUATION
    return any(kw.startswith(word) or (word.startswith(kw) and not word[len(kw):].strip(":"))
               for kw in _CONTINUATION)


def block_end_line(lines: list[str], ctx: CursorContext, last_partial: bool = False) -> int | None:
    """Index of the first of the suggestion's `lines` that leaves the cursor's block, None
    if none does. With `last_partial` the last line is still being generated: it counts
    only when what it has already decides it (its indentation, and its first word where
    that matters), so the answer holds whatever the line goes on with."""
    if len(lines) == 1:
        return None
    first = ctx.line_prefix + lines[0]
    if first.strip():
        base = indent_width(first)
        opener = opens_block(first)
    else:  # the cursor's line is blank: the block is the one the lines above are in
        prev = next((ln for ln in reversed(ctx.lines_before) if ln.strip()), "")
        base = indent_width(ctx.line_prefix) if ctx.line_prefix else indent_width(prev)
        opener = False
    following = next((ln for ln in ctx.lines_after if ln.strip()), None)
    if not opener and following is not None:
        # Lines at the level of the code after the cursor fit in before it.
        base = min(base, indent_width(following))
    depth = bracket_depth(first)
    in_string = first.count('"""') % 2 == 1 or first.count("'''") % 2 == 1
    for i in range(1, len(lines)):
        line = lines[i]
        if line.strip() and depth <= 0 and not in_string:
            w = indent_width(line)
            complete = not last_partial or i < len(lines) - 1
            if w < base or (opener and w == base and not _may_continue(line, complete)):
                return i
        depth = bracket_depth(line, depth)
        if (line.count('"""') + line.count("'''")) % 2 == 1:
            in_string = not in_string
    return None


def stop_at_block_end(text: str, ctx: CursorContext) -> str:
    """Cut at the first line that leaves the cursor's block: dedented below the cursor's
    line (or below the code that follows the cursor, when that is less indented); after a
    line opening a block, a line back at the opener's level ends the block too (except
    `else` / `elif` / `except` / `finally`). Lines inside open brackets don't count."""
    lines = text.split("\n")
    end = block_end_line(lines, ctx)
    return text if end is None else "\n".join(lines[:end])


def duplicate_line(lines: list[str], ctx: CursorContext) -> int | None:
    """Index of the first of the suggestion's (new) `lines` equal to the code line after the cursor."""
    following = next((ln.strip() for ln in ctx.lines_after if ln.strip()), None)
    if following is None:
        return None
    first_new = 0 if not ctx.line_prefix.strip() else 1
    return next((i for i in range(first_new, len(lines)) if lines[i].strip() == following), None)


def drop_suffix_duplicate_lines(text: str, ctx: CursorContext) -> str:
    """Cut where the suggestion starts repeating the line that follows the cursor."""
    lines = text.split("\n")
    dup = duplicate_line(lines, ctx)
    return text if dup is None else "\n".join(lines[:dup])


def drop_repeated_lines(text: str, ctx: CursorContext | None = None) -> str:
    """Drop a loop at the end: lines repeating the lines before them (and trailing whitespace)."""
    lines = text.rstrip().split("\n")
    for period in range(1, len(lines) // 2 + 1):
        i = len(lines) - 1
        while i - period >= 0 and lines[i] == lines[i - period]:
            i -= 1
        start = i + 1  # lines[start:] repeat with this period
        repeated = lines[start - period:start] if start >= period else []
        if len(lines) - start >= period and any(ln.strip() for ln in repeated):
            lines = lines[:start]
            break
    return "\n".join(lines)


def drop_repeated_fragment(text: str, ctx: CursorContext | None = None) -> str:
    """Drop a repeated fragment ending the last line (`a = a = a = a = `), and the line
    when nothing else is left of it."""
    lines = text.split("\n")
    last = lines[-1]
    m = re.search(r"(.{2,24}?)\1{3,}$", last) or re.search(r"([^\s#=*-])\1{7,}$", last)
    if m:
        lines[-1] = last[:m.start()]
        if not lines[-1].strip() and len(lines) > 1:
            lines.pop()
    return "\n".join(lines)


def drop_trailing_whitespace(text: str, ctx: CursorContext | None = None) -> str:
    return text.rstrip()
