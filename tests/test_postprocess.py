"""Post-processing rules, each on real code: the documents in tests/data are frozen
copies of this project's own modules (settings, prompt, model) and a tab-indented
variant. A test puts the cursor at a real place, feeds the rule what a model could
produce there (usually the real continuation plus what a model adds past it) and
checks what would be inserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeparrot_ls.postprocess import CursorContext, is_worth_showing, postprocess
from codeparrot_ls.postprocess.brackets import drop_closing_duplicate
from codeparrot_ls.postprocess.endings import (drop_repeated_fragment, drop_repeated_lines, drop_suffix_duplicate_lines,
                                               keep_single_line, stop_at_block_end)
from codeparrot_ls.postprocess.indentation import drop_leading_space, fix_first_line_indent, fix_indent_style

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def cursor(name: str, needle: str, *, truncate: bool = False, cut_line: bool = False,
           rest: str | None = None, new_line: str | None = None) -> tuple[CursorContext, str]:
    """Cursor right after `needle` in a real file. `truncate`: the document ends there
    (the user is writing at the end); `cut_line`: the rest of the cursor's line is gone;
    `rest`: the rest of the cursor's line replaced (an editor's auto-closed brackets);
    `new_line`: a new line opened there and `new_line` typed on it. Returns the context
    and the real text that followed the cursor."""
    text = read(name)
    assert text.count(needle) == 1, needle
    off = text.index(needle) + len(needle)
    after = text[off:]
    if truncate:
        text = text[:off]
    elif cut_line or rest is not None:
        eol = text.find("\n", off)
        text = text[:off] + (rest or "") + text[eol:]
    insert = ""
    if new_line is not None:
        text = text[:off] + new_line + "\n" + text[off:]
        insert = new_line
    return CursorContext.from_document(text, off + len(insert)), after


# ----------------------------------------------------------------------------- single line

def test_single_line_when_text_follows_the_cursor():
    ctx, after = cursor("model_module.py", "vocab_size=padded_")
    assert ctx.mid_line and ctx.line_suffix == "vocab_size(vocab_size),"
    raw = "vocab_size(vocab_size),\n        bos_token_id=eos_id, eos_token_id=eos_id,"
    assert keep_single_line(raw, ctx) == "vocab_size(vocab_size),"


def test_multi_line_allowed_at_the_end_of_a_line_unless_single_line_mode():
    ctx, after = cursor("settings_module.py", "if self.time_budget_ms < 1:", truncate=True)
    raw = after[:80]
    assert not ctx.mid_line
    assert keep_single_line(raw, ctx) == raw
    assert keep_single_line(raw, ctx, single_line=True) == ""  # the real text starts a new line


# ----------------------------------------------------------------------------- block end

def test_stop_when_the_body_of_a_block_opener_ends():
    ctx, after = cursor("settings_module.py", "        if self.time_budget_ms < 1:", truncate=True)
    # The real continuation runs on into the next top-level function.
    assert "\n\n\ndef _snake(key: str) -> str:" in after[:120]
    out = stop_at_block_end(after[:160], ctx)
    assert out.rstrip() == '\n            raise ValueError("timeBudgetMs must be >= 1")'


def test_stop_at_dedent_below_the_cursor_line():
    ctx, after = cursor("settings_module.py", 'raise ValueError("topP must be in (0, 1]")', truncate=True)
    raw = '\n        if self.time_budget_ms < 1:\n            raise ValueError("x")\n\nsettings = CompletionSettings()'
    # The document ends at the cursor (indented 12): a line at 8 leaves the cursor's block.
    assert stop_at_block_end(raw, ctx) == ""


def test_lines_at_the_level_of_the_following_code_are_kept():
    ctx, _ = cursor("settings_module.py", 'raise ValueError("maxNewTokens must be >= 1")')
    assert ctx.lines_after[0] == "        if self.context_tokens < 16:"
    raw = '\n        if self.min_chars < 0:\n            raise ValueError("x")\n    def other(self):'
    assert stop_at_block_end(raw, ctx) == '\n        if self.min_chars < 0:\n            raise ValueError("x")'


def test_lines_inside_an_open_bracket_do_not_end_the_block():
    ctx, after = cursor("model_module.py", "    return GPT2Config(", truncate=True)
    raw = after[:after.index("def build_model")]  # the call's arguments, ")", blank lines
    out = stop_at_block_end(raw + "def build_model(preset: str):", ctx)
    assert out.rstrip() == after[:after.index("\n    )") + len("\n    )")]


def test_else_continues_an_if_at_the_same_level():
    ctx, _ = cursor("settings_module.py", "        if isinstance(value, bool):", truncate=True)
    raw = "\n            return value\n        else:\n            return bool(value)\n    elif x:"
    assert stop_at_block_end(raw, ctx) == "\n            return value\n        else:\n            return bool(value)"


# ----------------------------------------------------------------------------- duplicates of the suffix

def test_drop_lines_that_repeat_the_line_after_the_cursor():
    # A new line typed before `if self.num_candidates < 1:` in validate().
    ctx, _ = cursor("settings_module.py", 'raise ValueError("suffixShare must be between 0 and 0.9")\n',
                    new_line="        ")
    raw = ('if self.min_chars < 0:\n            raise ValueError("minChars must be >= 0")\n'
           '        if self.num_candidates < 1:\n            raise ValueError("numCandidates must be >= 1")')
    assert drop_suffix_duplicate_lines(raw, ctx) == 'if self.min_chars < 0:\n            raise ValueError("minChars must be >= 0")'
    # The whole suggestion is the next line: nothing is left.
    assert drop_suffix_duplicate_lines("if self.num_candidates < 1:", ctx) == ""


def test_drop_a_closing_bracket_line_that_is_already_there():
    ctx, _ = cursor("model_module.py", "        **fields,\n", new_line="        ")
    assert ctx.lines_after[0] == "    )"
    assert drop_suffix_duplicate_lines("n_ctx=1024,\n    )", ctx) == "n_ctx=1024,"


def test_drop_the_closing_text_already_after_the_cursor():
    # The editor closed the bracket the user opened: "padded_vocab_size(|),"
    ctx, _ = cursor("model_module.py", "vocab_size=padded_vocab_size(", rest="),")
    assert drop_closing_duplicate("vocab_size),", ctx) == "vocab_size"
    assert drop_closing_duplicate("len(vocab)),", ctx) == "len(vocab)"
    assert drop_closing_duplicate("len(vocab))", ctx) == "len(vocab)"
    # A balanced suggestion keeps its brackets.
    assert drop_closing_duplicate("len(tokenizer.get_vocab())", ctx) == "len(tokenizer.get_vocab())"


def test_drop_a_closing_quote_already_after_the_cursor():
    ctx, _ = cursor("prompt_module.py", 'return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}')
    assert ctx.line_suffix == '{suffix}{FIM_MIDDLE}"'
    assert drop_closing_duplicate('{suffix}{FIM_MIDDLE}"', ctx) == ""  # all of it is there already
    ctx, _ = cursor("settings_module.py", 'raise ValueError("topP must be', rest='")')
    assert drop_closing_duplicate(' in (0, 1]")', ctx) == " in (0, 1]"


# ----------------------------------------------------------------------------- repetition

def test_drop_repeated_lines_at_the_end():
    ctx, after = cursor("model_module.py", 'n_positions=256),\n', truncate=True)
    real = after.split("\n")[0]
    raw = "\n".join([real] * 4)
    assert drop_repeated_lines(raw, ctx) == real
    loop = 'if x:\n    return value\nif x:\n    return value\nif x:'
    assert drop_repeated_lines(loop, ctx) == "if x:\n    return value"


def test_drop_a_repeated_fragment_at_the_end_of_a_line():
    assert drop_repeated_fragment('raise ValueError(ValueError(ValueError(ValueError(ValueError(') == "raise "
    assert drop_repeated_fragment("x = [\n    ((((((((((((") == "x = ["


def test_real_code_is_not_repetition():
    text = read("settings_module.py")
    body = text[text.index("    def validate"):text.index("def _snake")]
    assert drop_repeated_fragment(drop_repeated_lines(body)) == body.rstrip()
    presets = read("model_module.py")
    block = presets[presets.index("PRESETS = {"):presets.index("}\n") + 1]
    assert drop_repeated_fragment(drop_repeated_lines(block)) == block


# ----------------------------------------------------------------------------- whitespace

def test_extra_indentation_after_typed_indentation_is_removed():
    ctx, _ = cursor("settings_module.py", "    def validate(self) -> None:\n", new_line="        ")
    raw = "    if self.max_new_tokens < 1:\n            raise ValueError(\"maxNewTokens must be >= 1\")"
    assert fix_first_line_indent(raw, ctx) == raw[4:]
    # A valid indentation is kept (a nested line after a line that opens a block).
    ctx2, _ = cursor("settings_module.py", "        if self.max_new_tokens < 1:\n", new_line="        ")
    assert fix_first_line_indent("    raise ValueError('x')", ctx2) == "    raise ValueError('x')"


def test_no_double_space_and_no_space_after_a_dot():
    ctx, _ = cursor("settings_module.py", 'raise ValueError("topP must be in (0, 1]")\n        if self.time_budget_ms < 1:\n            raise ',
                    cut_line=True)
    assert not ctx.mid_line
    assert drop_leading_space(' ValueError("timeBudgetMs must be >= 1")', ctx) == 'ValueError("timeBudgetMs must be >= 1")'
    ctx, _ = cursor("settings_module.py", "        if self.time_budget_ms < 1:\n            raise ValueError(\"timeBudgetMs must be >= 1\")\n", new_line="        self.")
    assert drop_leading_space(" validate()", ctx) == "validate()"


def test_tabs_document_gets_tabs():
    ctx, after = cursor("settings_module_tabs.py", "\tdef validate(self) -> None:", truncate=True)
    raw = "\n        if self.max_new_tokens < 1:\n            raise ValueError(\"maxNewTokens must be >= 1\")"
    fixed = "\n\t\tif self.max_new_tokens < 1:\n\t\t\traise ValueError(\"maxNewTokens must be >= 1\")"
    assert fix_indent_style(raw, ctx) == fixed and after.startswith(fixed)  # the file's real lines
    ctx, after = cursor("settings_module.py", "    def validate(self) -> None:", truncate=True)
    assert fix_indent_style("\n\t\tif x:\n\t\t\tpass", ctx) == "\n        if x:\n            pass"


# ----------------------------------------------------------------------------- empty / the whole chain

def test_empty_and_short_suggestions_are_dropped():
    assert not is_worth_showing("")
    assert not is_worth_showing("  \n\t\n ")
    assert not is_worth_showing(")", min_chars=2)
    assert is_worth_showing("x)", min_chars=2)
    ctx, _ = cursor("settings_module.py", "if self.time_budget_ms < 1:", truncate=True)
    assert postprocess("\n\n   \n", ctx) is None


def test_whole_chain_on_a_mid_line_suggestion():
    ctx, _ = cursor("model_module.py", "vocab_size=padded_vocab_size(", rest="),")
    assert postprocess("len(vocab)),\n        bos_token_id=eos_id,", ctx) == "len(vocab)"


@pytest.mark.parametrize("name", ["settings_module.py", "model_module.py", "prompt_module.py", "settings_module_tabs.py"])
def test_rules_are_idempotent_and_only_cut_on_real_continuations(name):
    """At every 7th position of a real file, with the real next 200 characters as the
    suggestion: the output passes the rules unchanged, and (apart from whitespace fixes)
    it is a piece of the real text."""
    text = read(name)
    for off in range(0, len(text), 7):
        ctx = CursorContext.from_document(text[:off] + text[off:][200:], off)
        raw = text[off:off + 200]
        out = postprocess(raw, ctx)
        if out is None:
            continue
        assert postprocess(out, ctx) == out, (off, out)
        assert out.strip() in raw, (off, out)
