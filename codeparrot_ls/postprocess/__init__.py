"""What a suggestion must not do: run past its line or block, repeat itself, duplicate
the code after the cursor, break the brackets or the indentation.

Each rule is one function `rule(text, ctx) -> text` on the suggestion's text (what would
be inserted at the cursor), given the text around the cursor (`cursor.CursorContext`);
`postprocess` applies them in order and returns None for a suggestion not worth showing.
The rules follow the list in Tabby's completion post-processing (see docs); they are
plain string functions so each can be tested on real code. By what they look at:

* endings.py      the suggestion's line, the cursor's block, the code after the cursor,
                  a loop at the end, trailing whitespace
* brackets.py     closers that close nothing open or repeat the rest of the line
* indentation.py  leading whitespace, the first line's indentation, tabs vs spaces
"""

from __future__ import annotations

from codeparrot_ls.postprocess.brackets import balance_brackets, drop_closing_duplicate
from codeparrot_ls.postprocess.cursor import CursorContext
from codeparrot_ls.postprocess.endings import (block_end_line, drop_repeated_fragment, drop_repeated_lines,
                                               drop_suffix_duplicate_lines, drop_trailing_whitespace,
                                               duplicate_line, keep_single_line, stop_at_block_end)
from codeparrot_ls.postprocess.indentation import drop_leading_space, fix_first_line_indent, fix_indent_style

__all__ = ["CursorContext", "is_worth_showing", "postprocess", "settled_length"]


def is_worth_showing(text: str, min_chars: int = 1) -> bool:
    """Not empty, not only whitespace, at least `min_chars` visible characters."""
    return len(text.strip()) >= max(1, min_chars)


def postprocess(text: str, ctx: CursorContext, single_line: bool = False, min_chars: int = 1) -> str | None:
    """All rules in order (repeated until nothing changes: one rule's cut can expose
    work for another); None when nothing worth showing is left."""
    for _ in range(4):
        before = text
        text = keep_single_line(text, ctx, single_line)
        text = stop_at_block_end(text, ctx)
        text = drop_suffix_duplicate_lines(text, ctx)
        text = drop_repeated_lines(text, ctx)
        text = drop_repeated_fragment(text, ctx)
        text = drop_trailing_whitespace(text, ctx)
        text = drop_closing_duplicate(text, ctx)
        text = balance_brackets(text, ctx)      # after every rule that can change brackets
        text = drop_leading_space(text, ctx)
        text = fix_first_line_indent(text, ctx)
        text = fix_indent_style(text, ctx)
        text = drop_trailing_whitespace(text, ctx)
        if text == before:
            break
    return text if is_worth_showing(text, min_chars) else None


def settled_length(text: str, ctx: CursorContext) -> tuple[int, int] | None:
    """For a multi-line suggestion still being generated (`text` so far): whether
    `postprocess` is already certain to cut it back to `text[:length]` whatever comes next,
    because a line left the block or repeats the code after the cursor.

    Returns (length, evidence) or None. `evidence` is how much of `text` the answer rests
    on: were the text cut short below it (by a stop string), the answer could change, except
    when cut exactly at `length`. The generated text after `length` cannot change the
    result: the first pass of `postprocess` reduces both to the same text (so later passes
    agree), because `stop_at_block_end` and `drop_suffix_duplicate_lines` only look at the
    lines before their cut, and the cut line's indentation and first word are known.
    """
    lines = text.split("\n")
    end = block_end_line(lines, ctx, last_partial=True)
    dup = duplicate_line(lines[:-1], ctx)  # only whole lines can be compared
    cuts = [i for i in (end, dup) if i is not None]
    if not cuts:
        return None
    cut = min(cuts)
    start = sum(len(ln) + 1 for ln in lines[:cut])   # where line `cut` starts
    length = max(start - 1, 0)
    evidence = start + len(lines[cut]) if cut < len(lines) - 1 else len(text)
    return length, evidence
