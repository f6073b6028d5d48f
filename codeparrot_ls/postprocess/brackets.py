"""Rules on brackets and quotes: a one-line suggestion does not repeat the closer already
after the cursor, and no suggestion closes a bracket that is not open or that the rest of
the line closes. Strings and comments do not count."""

from __future__ import annotations

import re

from codeparrot_ls.postprocess.cursor import CLOSERS, OPENERS, CursorContext, bracket_depth

BRACKET_WINDOW = 20_000   # characters before (and after) the cursor whose brackets count


def _balance(text: str) -> tuple[int, int, int]:
    """(net open brackets, double quotes, single quotes) in `text`: additive over concatenation."""
    return bracket_depth(text), text.count('"'), text.count("'")


def _imbalance(*parts: tuple[int, int, int]) -> int:
    depth, dq, sq = (sum(p[i] for p in parts) for i in range(3))
    return abs(depth) + dq % 2 + sq % 2


def drop_closing_duplicate(text: str, ctx: CursorContext) -> str:
    """Drop the end of a one-line suggestion that repeats the text already after the
    cursor (a closing bracket or quote), when that makes the line balanced.

    Linear in the line: the line's counts are taken once, and only ends of the suggestion
    are compared (the rest of the line may be megabytes long)."""
    if "\n" in text:
        return text
    body = text.rstrip()
    rest = ctx.line_suffix.lstrip()[:len(body)]
    if not rest.strip():
        return text
    around = _balance(ctx.line_prefix + ctx.line_suffix)
    whole = _balance(body)
    before = _imbalance(around, whole)
    for k in range(len(rest), 0, -1):
        if body.endswith(rest[:k]):
            cut = _balance(body[-k:])
            if _imbalance(around, whole, tuple(-c for c in cut)) < before:
                return body[:-k]
    return text


# Brackets outside strings and comments (an unterminated string runs to its line's end, a
# triple-quoted one to the end of the text): what `_bracket_scan` looks at.
_CODE_TOKEN = re.compile(
    r"#[^\n]*"
    r"|'''(?:\\.|[^\\])*?(?:'''|$)"
    r'|"""(?:\\.|[^\\])*?(?:"""|$)'
    r'''|"(?:\\.|[^"\\\n])*(?:"|(?=\n)|$)'''
    r"""|'(?:\\.|[^'\\\n])*(?:'|(?=\n)|$)"""
    r"|[()\[\]{}]", re.S)
_MATCH = {")": "(", "]": "[", "}": "{"}
_STATEMENT_STARTS = ("def ", "async def ", "class ")


def _bracket_scan(text: str, start: int) -> tuple[list[int], list[int | None]]:
    """Brackets of `text` (code only) matched with a stack. Returns (the closers at or after
    `start` that close nothing open, and for each bracket open at `start` - innermost last -
    where it is closed, or None)."""
    stack: list[int] = []
    open_at_start: list[int] | None = None
    unmatched: list[int] = []
    closed_at: dict[int, int] = {}
    for m in _CODE_TOKEN.finditer(text):
        tok, pos = m.group(), m.start()
        if open_at_start is None and pos >= start:
            open_at_start = list(stack)
        if tok in OPENERS:
            stack.append(pos)
        elif tok not in _MATCH:
            continue                      # a string or a comment
        elif stack and text[stack[-1]] == _MATCH[tok]:
            closed_at[stack.pop()] = pos
        elif pos >= start:
            unmatched.append(pos)
    return unmatched, [closed_at.get(o) for o in (stack if open_at_start is None else open_at_start)]


def _open_quote(text: str) -> str:
    """The quote that would end a one-line string still open at the end of `text`, or ""."""
    last = None
    for last in _CODE_TOKEN.finditer(text):
        pass
    tok = "" if last is None or last.end() != len(text) else last.group()
    if tok[:1] not in ("'", '"') or tok[:3] in ("'''", '"""'):
        return ""
    return "" if re.fullmatch(r"(?:\\.|[^\\])*" + tok[0], tok[1:], re.S) else tok[0]


def bracket_excess(text: str, ctx: CursorContext) -> tuple[int | None, bool]:
    """(where the suggestion `text` first breaks the brackets, or None; whether the
    suggestion plus the rest of the line has more unmatched closers than the rest alone)."""
    # From the last `def` / `class` line above: no bracket or string is open there, whereas a
    # window's first line may sit inside a docstring that began above it.
    first = next((k for k in range(len(ctx.lines_before) - 1, -1, -1)
                  if ctx.lines_before[k].lstrip().startswith(_STATEMENT_STARTS)), 0)
    above = "\n".join([*ctx.lines_before[first:], ctx.line_prefix])
    if len(above) > BRACKET_WINDOW:    # from a line start inside the window when there is one
        above = above[-BRACKET_WINDOW:]
        above = above[above.find("\n") + 1:]
    rest = ctx.line_suffix[:BRACKET_WINDOW]
    start, end = len(above), len(above) + len(text)
    # The cursor inside a string the rest of the line does not end (`opts["na|]`): the
    # suggestion ends it, so the rest of the line counts as code after it.
    quote = _open_quote(above)
    quote = quote if quote and _open_quote(above + rest) else ""
    alone_unmatched, alone_closed = _bracket_scan(above + quote + rest, start)
    unmatched, closed = _bracket_scan(above + text + rest, start)
    cuts = [p for p in unmatched if p < end]              # closes nothing open
    # ... or closes a bracket that the rest of the line closes.
    cuts += [c for a, c in zip(alone_closed, closed) if a is not None and c is not None and c < end]
    return (min(cuts) - start if cuts else None), len(unmatched) > len(alone_unmatched)


def balance_brackets(text: str, ctx: CursorContext) -> str:
    """Never more closers than openers: the suggestion plus the rest of the cursor's line
    closes no bracket that is not open (above the cursor or in the suggestion), and none
    that the rest of the line already closes (`f(a` + `b)` + `)` gives `f(ab)`). The
    suggestion is cut before the closer that breaks this. Strings and comments do not
    count; "above" is `ctx.lines_before` from its last `def` / `class` line (a bracket opened
    further up is unknown, so a suggestion closing it is cut: cautious, never wrong)."""
    while any(c in text for c in CLOSERS + "'\""):     # (a quote can expose the line's closers)
        cut, worse = bracket_excess(text, ctx)
        if cut is None:
            return "" if worse else text  # only a string the suggestion opens or ends: drop it
        text = text[:cut]
    return text
