"""Rules on a suggestion's leading whitespace and indentation: no double space after what
the user typed, a first line indented as the block allows, new lines in the document's
indentation style (tabs or spaces)."""

from __future__ import annotations

from codeparrot_ls.postprocess.cursor import CONTEXT_LINES_BEFORE, CursorContext, bracket_depth, indent_width, opens_block

_DEFAULT_UNIT = 4


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
    if bracket_depth("\n".join(code[-CONTEXT_LINES_BEFORE:])) > 0:
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
    if opens_block(prev):
        unit = indent_style(code)[1]
        return {indent_width(prev) + unit} | ({indent_width(prev) + 4, indent_width(prev) + 2})
    return levels


def drop_leading_space(text: str, ctx: CursorContext) -> str:
    """No double space after a space, and no space after a dot, typed before the cursor."""
    lp = ctx.line_prefix
    if text and lp.strip() and lp.endswith((" ", "\t", ".")) and text[0] in " \t":
        return text.lstrip(" \t")
    return text


def fix_first_line_indent(text: str, ctx: CursorContext) -> str:
    """On a line of only indentation, no first-line indentation that the block does not
    allow when the user already typed a valid one."""
    lp = ctx.line_prefix
    if not text or not lp or lp.strip() or text[0] not in " \t":
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
