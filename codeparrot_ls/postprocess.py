"""What a suggestion must not do: run past its line or block, repeat itself, duplicate
the code after the cursor, or break the indentation.

Each rule is one function `rule(text, ctx) -> text` on the suggestion's text (what would
be inserted at the cursor); `postprocess` applies them in order and returns None for a
suggestion not worth showing. The rules follow the list in Tabby's completion
post-processing (see docs); they are plain string functions so each can be tested on
real code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CONTEXT_LINES_BEFORE = 60
CONTEXT_LINES_AFTER = 8
_CLOSERS = ")]}"
_OPENERS = "([{"
_CONTINUATION = ("else", "elif", "except", "finally")
_DEFAULT_UNIT = 4
BRACKET_WINDOW = 20_000   # characters before (and after) the cursor whose brackets count


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


# ----------------------------------------------------------------------------- helpers

def indent_width(line: str) -> int:
    ws = line[:len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(8))


def _bracket_depth(text: str, depth: int = 0) -> int:
    """Net open brackets after `text` (strings and comments are not parsed: a heuristic)."""
    return depth + sum(map(text.count, _OPENERS)) - sum(map(text.count, _CLOSERS))


def _opens_block(line: str) -> bool:
    code = line.split("#", 1)[0].rstrip()
    return code.endswith(":")


def indent_style(lines: list[str]) -> tuple[str, int]:
    """("tab" | "space" | "" when no line is indented, unit width) of the document's lines."""
    tabs = spaces = 0
    widths = set()
    for line in lines:
        if not line.strip():
            continue
        if line.startswith("\t"):
            tabs += 1
        elif line.startswith(" "):
            spaces += 1
            widths.add(indent_width(line))
    if tabs > spaces:
        return "tab", 8
    if not spaces:
        return "", _DEFAULT_UNIT
    unit = min((w for w in widths if w > 0), default=_DEFAULT_UNIT)
    return "space", unit if unit in (2, 3, 4, 8) else _DEFAULT_UNIT


def allowed_indents(lines_before: list[str]) -> set[int] | None:
    """Indentation widths a new line may have after `lines_before` (None: no constraint,
    e.g. inside an open bracket)."""
    code = [ln for ln in lines_before if ln.strip() and not ln.lstrip().startswith("#")]
    if not code:
        return {0}
    if _bracket_depth("\n".join(code[-CONTEXT_LINES_BEFORE:])) > 0:
        return None
    prev = code[-1]
    levels, smallest = set(), indent_width(prev)
    levels.add(smallest)
    for ln in reversed(code[:-1]):  # the enclosing blocks' levels
        w = indent_width(ln)
        if w < smallest:
            levels.add(w)
            smallest = w
    levels.add(0)
    if _opens_block(prev):
        unit = indent_style(code)[1]
        return {indent_width(prev) + unit} | ({indent_width(prev) + 4, indent_width(prev) + 2})
    return levels


# ----------------------------------------------------------------------------- the rules

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
        opener = _opens_block(first)
    else:  # the cursor's line is blank: the block is the one the lines above are in
        prev = next((ln for ln in reversed(ctx.lines_before) if ln.strip()), "")
        base = indent_width(ctx.line_prefix) if ctx.line_prefix else indent_width(prev)
        opener = False
    following = next((ln for ln in ctx.lines_after if ln.strip()), None)
    if not opener and following is not None:
        # Lines at the level of the code after the cursor fit in before it.
        base = min(base, indent_width(following))
    depth = _bracket_depth(first)
    in_string = first.count('"""') % 2 == 1 or first.count("'''") % 2 == 1
    for i in range(1, len(lines)):
        line = lines[i]
        if line.strip() and depth <= 0 and not in_string:
            w = indent_width(line)
            complete = not last_partial or i < len(lines) - 1
            if w < base or (opener and w == base and not _may_continue(line, complete)):
                return i
        depth = _bracket_depth(line, depth)
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


def drop_trailing_repetition(text: str, ctx: CursorContext | None = None) -> str:
    """Drop a loop at the end: lines repeating the lines before them, and a last line
    ending in a repeated fragment (`a = a = a = a = `)."""
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
    last = lines[-1]
    m = re.search(r"(.{2,24}?)\1{3,}$", last) or re.search(r"([^\s#=*-])\1{7,}$", last)
    if m:
        lines[-1] = last[:m.start()]
        if not lines[-1].strip() and len(lines) > 1:
            lines.pop()
    return "\n".join(lines)


def _balance(text: str) -> tuple[int, int, int]:
    """(net open brackets, double quotes, single quotes) in `text`: additive over concatenation."""
    return _bracket_depth(text), text.count('"'), text.count("'")


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
        if tok in _OPENERS:
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
    while any(c in text for c in _CLOSERS + "'\""):     # (a quote can expose the line's closers)
        cut, worse = bracket_excess(text, ctx)
        if cut is None:
            return "" if worse else text  # only a string the suggestion opens or ends: drop it
        text = text[:cut]
    return text


def fix_leading_whitespace(text: str, ctx: CursorContext) -> str:
    """No double space after a space or a dot, and no first-line indentation that the
    block does not allow when the user already typed a valid one."""
    if not text:
        return text
    lp = ctx.line_prefix
    if lp.strip():
        if lp.endswith((" ", "\t", ".")) and text[0] in " \t":
            return text.lstrip(" \t")
        return text
    if not lp or text[0] not in " \t":
        return text
    allowed = allowed_indents(ctx.lines_before)
    if allowed is None:
        return text
    first = text.split("\n", 1)[0]
    if indent_width(lp + first) not in allowed and indent_width(lp) in allowed:
        return text.lstrip(" \t") if "\n" not in text else first.lstrip(" \t") + text[len(first):]
    return text


def fix_indent_style(text: str, ctx: CursorContext) -> str:
    """New lines indented with the document's style (tabs vs spaces)."""
    if "\n" not in text:
        return text
    style, unit = indent_style(ctx.lines_before + [ctx.line_prefix])
    lines = text.split("\n")
    for i in range(1, len(lines)):
        line = lines[i]
        ws = line[:len(line) - len(line.lstrip(" \t"))]
        if style == "tab" and " " in ws:
            width = len(ws.expandtabs(_DEFAULT_UNIT))
            lines[i] = "\t" * (width // _DEFAULT_UNIT) + " " * (width % _DEFAULT_UNIT) + line[len(ws):]
        elif style == "space" and "\t" in ws:
            lines[i] = ws.expandtabs(unit) + line[len(ws):]
    return "\n".join(lines)


def drop_trailing_whitespace(text: str, ctx: CursorContext | None = None) -> str:
    return text.rstrip()


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
        text = drop_trailing_repetition(text, ctx)
        text = drop_trailing_whitespace(text, ctx)
        text = drop_closing_duplicate(text, ctx)
        text = balance_brackets(text, ctx)      # after every rule that can change brackets
        text = fix_leading_whitespace(text, ctx)
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
