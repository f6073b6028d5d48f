"""The bracket rule (`balance_brackets`) on real code: the standard library's inspect.py,
modulefinder.py and shutil.py, and this project's modules in tests/data. No suggestion plus
the rest of its line closes a bracket that is not open, or one the rest of the line closes."""

from __future__ import annotations

import pytest

from codeparrot_ls.postprocess import CursorContext, postprocess
from codeparrot_ls.postprocess.brackets import balance_brackets, bracket_excess
from conftest import STDLIB
from test_postprocess import cursor


def stdlib_cursor(module: str, needle: str, *, rest: str | None = None, truncate: bool = False) -> CursorContext:
    """Cursor right after `needle` in a standard-library module (`rest`: the rest of its line
    replaced; `truncate`: the document ends there)."""
    text = (STDLIB / module).read_text(encoding="utf-8")
    assert text.count(needle) == 1, needle
    off = text.index(needle) + len(needle)
    if truncate:
        text = text[:off]
    elif rest is not None:
        eol = text.find("\n", off)
        text = text[:off] + rest + text[eol:]
    return CursorContext.from_document(text, off)


def holds(text: str, ctx: CursorContext) -> bool:
    cut, worse = bracket_excess(text, ctx)
    return cut is None and not worse


def test_a_closer_nothing_opened_is_cut():
    # The candidate: one ")" more than the line opens.
    ctx = stdlib_cursor("modulefinder.py", "        name, ext = ", rest="")
    raw = "os.path.splitext(os.path.join(root, name)) or os.path.splitext(name))):"
    assert balance_brackets(raw, ctx) == "os.path.splitext(os.path.join(root, name)) or os.path.splitext(name)"
    assert holds(balance_brackets(raw, ctx), ctx) and not holds(raw, ctx)
    # Balanced suggestions are left alone.
    assert balance_brackets("os.path.splitext(name)", ctx) == "os.path.splitext(name)"


def test_brackets_opened_on_lines_above_may_be_closed():
    # `filename = (os.path.splitext(filename)[0] +` is open: the next line may close it, once.
    ctx = stdlib_cursor("inspect.py", "        filename = (os.path.splitext(filename)[0] +\n                    ",
                        rest="")
    real = "importlib.machinery.SOURCE_SUFFIXES[0])"
    assert balance_brackets(real, ctx) == real
    assert balance_brackets(real + ")", ctx) == real
    assert balance_brackets("SOURCE_SUFFIXES[0]])", ctx) == "SOURCE_SUFFIXES[0]"   # "]" closes nothing: cut there


def test_a_closer_the_rest_of_the_line_has_is_not_repeated():
    # The editor auto-closed the call: `os.path.islink(|)`; the suggestion must not close it too.
    ctx = stdlib_cursor("shutil.py", "    if not follow_symlinks and _islink(src) and os.path.islink(", rest="):")
    assert balance_brackets("dst)", ctx) == "dst"
    assert balance_brackets("dst):", ctx) == "dst"
    assert balance_brackets("os.fspath(dst)", ctx) == "os.fspath(dst)"   # its own pair is fine
    assert balance_brackets("dst) or x", ctx) == "dst"
    # Mixed kinds: "]" never closes "(".
    ctx, _ = cursor("model_module.py", "vocab_size=padded_vocab_size(", rest="),")
    assert balance_brackets("sizes[0]])", ctx) == "sizes[0]"


def test_strings_and_comments_do_not_count():
    ctx = stdlib_cursor("shutil.py", "    if not follow_symlinks and _islink(src) and os.path.islink(", rest="):")
    assert balance_brackets('dst + ")"', ctx) == 'dst + ")"'
    assert balance_brackets("dst  # )", ctx) == "dst  # )"
    # The cursor inside a string: brackets typed there are text.
    ctx, _ = cursor("settings_module.py", 'raise ValueError("topP must be', rest='")')
    assert balance_brackets(" in (0, 1]", ctx) == " in (0, 1]"
    # A quote that turns the rest of the line's closer into code that closes nothing: dropped.
    ctx = stdlib_cursor("shutil.py", "_WINDOWS = os.name == 'n", rest=")'")
    assert not holds("'", ctx) and balance_brackets("'", ctx) == ""
    assert balance_brackets("t", ctx) == "t"


def test_multi_line_suggestions_are_cut_at_the_closer():
    ctx = stdlib_cursor("shutil.py", "    if not follow_symlinks and _islink(src) and os.path.islink(dst):\n",
                        truncate=True)
    raw = "        if hasattr(os, 'lchmod'):\n            stat_func = os.lstat)\n        else:"
    assert balance_brackets(raw, ctx) == "        if hasattr(os, 'lchmod'):\n            stat_func = os.lstat"


def test_postprocess_applies_the_rule_with_the_closing_duplicate_rule():
    ctx, _ = cursor("model_module.py", "vocab_size=padded_vocab_size(", rest="),")
    for raw in ("vocab_size),", "len(vocab)),", "vocab_size) + 1", "len(vocab))) or 0"):
        out = postprocess(raw, ctx)
        assert out is None or holds(out, ctx), (raw, out)
    assert postprocess("vocab_size) + 1", ctx) == "vocab_size"


@pytest.mark.parametrize("module", ["inspect.py", "shutil.py", "argparse.py"])
def test_the_real_continuation_is_never_cut(module):
    """At every line start of a real module, the rest of the real file (up to 3 lines) passes
    the rule unchanged: real code never has more closers than openers."""
    text = (STDLIB / module).read_text(encoding="utf-8")
    starts = [i + 1 for i, c in enumerate(text) if c == "\n"][::37]
    for off in starts:
        ctx = CursorContext.from_document(text[:off], off)
        real = "\n".join(text[off:].split("\n")[:3])
        if real.lstrip().startswith(('"', "'")) or '"""' in real or "'''" in real:
            continue   # a docstring's text is not code (the window may begin inside one)
        assert balance_brackets(real, ctx) == real, (module, off, real)


LONGLINK = 'info["name"] = "././@LongLink"\n        info["type"] = type\n        info["size"] = len(name)\n        info["ma'


def test_the_cursor_inside_a_string_the_editor_left_open():
    # `info["ma|]`: the editor closed the bracket, not the quote; the suggestion ends the string.
    ctx = stdlib_cursor("tarfile.py", LONGLINK, rest="]")
    assert balance_brackets('gic"] = GNU_MAGIC', ctx) == 'gic"'
    assert balance_brackets('gic"', ctx) == 'gic"'
    ctx = stdlib_cursor("tarfile.py", LONGLINK, rest='"]')   # both closed: nothing to cut
    assert balance_brackets("gic", ctx) == "gic"


def test_a_window_that_begins_inside_a_docstring():
    # The lines the rules see may begin inside a docstring: its closing quotes then look like
    # an opening. Brackets are counted from the last `def` line instead.
    ctx = stdlib_cursor("tarfile.py", LONGLINK, rest="]")
    opening = max(k for k, ln in enumerate(ctx.lines_before) if ln.strip().startswith('"""Return the string payload'))
    ctx.lines_before = ctx.lines_before[opening + 1:]       # inside _create_payload's docstring
    assert balance_brackets('gic"] = GNU_MAGIC', ctx) == 'gic"'
