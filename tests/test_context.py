"""Context building (token budget, FIM layout, snippets) and token healing,
with the real tiny tokenizer and real standard-library source as documents."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from codeparrot_ls import prompt as P
from codeparrot_ls.context import ContextBuilder
from codeparrot_ls.healing import heal, last_pretoken_start, should_heal
from codeparrot_ls.settings import CompletionSettings

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def builder(tok):
    return ContextBuilder(tok, P.special_token_ids(tok.get_vocab()), n_positions=512, supports_fim=True)


@pytest.fixture(scope="module")
def source():
    return (STDLIB / "tarfile.py").read_text(encoding="utf-8")


def at(text: str, needle: str, after: int = 0) -> tuple[int, int]:
    """(offset, line) just after the first `needle`."""
    off = text.index(needle) + len(needle) + after
    return off, text.count("\n", 0, off)


# ----------------------------------------------------------------------------- budget and layout

def test_spm_prompt_is_the_fim_layout_of_a_window_around_the_cursor(builder, tok, source):
    off, line = at(source, "def extractall(self, path=\".\"", after=0)
    ctx = builder.build(source, off, line, CompletionSettings())
    assert ctx.layout == "spm"
    assert source[:off].endswith(ctx.prefix) and source[off:].startswith(ctx.suffix)
    assert ctx.prefix_ids == tok.encode(ctx.prefix).ids and ctx.suffix_ids == tok.encode(ctx.suffix).ids
    ids = ctx.prompt_ids()
    sp = builder.special_ids
    assert ids == [sp[P.END_OF_TEXT], sp[P.FIM_PREFIX], sp[P.FIM_SUFFIX], *ctx.suffix_ids, sp[P.FIM_MIDDLE],
                   *ctx.prefix_ids]
    decoded = tok.decode(ids, skip_special_tokens=False)
    assert decoded == P.END_OF_TEXT + P.fim_prompt(ctx.prefix, ctx.suffix, "spm")
    # The window starts at a line start and ends at a line end.
    assert ctx.prefix.startswith("\n") is False and source[off - len(ctx.prefix) - 1] == "\n"


def test_budget_respected_and_prefix_gets_its_share(builder, source):
    s = CompletionSettings(context_tokens=300, suffix_share=0.25, max_new_tokens=48)
    off, line = at(source, "def extractall(")
    ctx = builder.build(source, off, line, s)
    n = len(ctx.prompt_ids())
    assert n <= 300
    fixed = 1 + P.FIM_PROMPT_TOKENS   # <|endoftext|> and the FIM sentinels
    assert len(ctx.suffix_ids) <= int((300 - fixed) * 0.25)
    assert len(ctx.prefix_ids) > len(ctx.suffix_ids)
    assert len(ctx.prefix_ids) > 0.6 * (300 - fixed - len(ctx.suffix_ids))  # lines snap: not exact
    # The model's positions bound the budget too: prompt + new tokens fit n_positions.
    big = CompletionSettings(context_tokens=4096, max_new_tokens=100)
    assert len(builder.build(source, off, line, big).prompt_ids()) + 100 <= 512


def test_unused_budget_moves_to_the_other_side(builder):
    text = "import os\n\n\ndef main():\n    return os.getcwd()\n" + "x = 1\n" * 400
    off, line = at(text, "def main():")
    s = CompletionSettings(context_tokens=200, suffix_share=0.25)
    ctx = builder.build(text, off, line, s)
    assert ctx.prefix == text[:off]                 # the whole (short) prefix
    assert len(ctx.suffix_ids) > int(196 * 0.25)    # the suffix took what the prefix left


def test_left_to_right_without_fim(builder, tok, source):
    off, line = at(source, "def extractall(")
    ctx = builder.build(source, off, line, CompletionSettings(context_tokens=256), use_fim=False)
    assert ctx.layout == "l2r" and ctx.suffix == ""
    assert ctx.prompt_ids() == [builder.special_ids[P.END_OF_TEXT], *ctx.prefix_ids]
    no_fim = ContextBuilder(tok, builder.special_ids, 512, supports_fim=False)
    assert no_fim.build(source, off, line, CompletionSettings()).layout == "l2r"


def test_typing_keeps_a_long_common_prompt_prefix(builder, source):
    """SPM + snapped window: each typed character only changes the end of the prompt."""
    off, line = at(source, "def extractall(self")
    s = CompletionSettings()
    text, prompts = source, []
    for ch in ", members=None":
        text = text[:off] + ch + text[off:]
        off += 1
        prompts.append(builder.build(text, off, line, s, uri="file:///tarfile.py").prompt_ids())
    for a, b in zip(prompts, prompts[1:]):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common >= min(len(a), len(b)) - 4, (common, len(a), len(b))
    assert len(prompts[0]) > 300


def test_long_single_line_is_cut_by_characters(builder, tok):
    text = "x = [" + ", ".join(str(i) for i in range(3000)) + "]"
    off = text.index("1500")
    ctx = builder.build(text, off, 0, CompletionSettings(context_tokens=200))
    assert text[:off].endswith(ctx.prefix) and text[off:].startswith(ctx.suffix)
    assert len(ctx.prompt_ids()) <= 200 and "\ufffd" not in ctx.prefix


def test_special_token_spelling_in_source_stays_text(builder):
    text = 'SEP = "<|endoftext|>"\nMARK = "<fim_middle>"\nx = '
    ctx = builder.build(text, len(text), 2, CompletionSettings())
    body = ctx.prompt_ids()[ctx.prompt_ids().index(builder.special_ids[P.FIM_MIDDLE]) + 1:]
    assert not set(body) & set(builder.special_ids.values())


def test_quality_token_is_prepended_when_the_model_was_conditioned(tok):
    sp = P.special_token_ids(tok.get_vocab())
    b = ContextBuilder(tok, sp, 512, supports_fim=True, quality_conditioning=True)
    ctx = b.build("x = 1\n", 6, 1, CompletionSettings())
    # As in training: a document starts after <|endoftext|>, with its quality token first.
    assert ctx.prompt_ids()[:3] == [sp[P.END_OF_TEXT], sp[P.BEST_QUALITY_TOKEN], sp[P.FIM_PREFIX]]


# ----------------------------------------------------------------------------- snippets

def test_snippets_from_other_documents_most_relevant_lead_the_prompt(builder, tok):
    shlex_src = (STDLIB / "shlex.py").read_text(encoding="utf-8")
    glob_src = (STDLIB / "glob.py").read_text(encoding="utf-8")
    text = "import shlex\n\nlexer = shlex.shlex(posix=True)\nlexer.whitespace_split = True\nlexer.commenters = ''\ntok = lexer."
    s = CompletionSettings(other_files_tokens=128)
    ctx = builder.build(text, len(text), 5, s, [("file:///g/glob.py", glob_src), ("file:///s/shlex.py", shlex_src)])
    assert ctx.snippets and ctx.snippets[0].uri.endswith("shlex.py")
    eos = builder.special_ids[P.END_OF_TEXT]
    ids = ctx.prompt_ids()
    assert ids[len(ctx.head_ids) - 1] == eos and ids[len(ctx.head_ids)] == builder.special_ids[P.FIM_PREFIX]
    assert ids[0] == eos   # the block is a document of its own, like the current one
    head = tok.decode(ctx.head_ids[1:-1], skip_special_tokens=False)
    assert "# shlex.py\n" in head and len(ctx.head_ids) <= 128
    assert len(ids) <= s.context_tokens
    # Typing on the cursor's line does not change the snippet block (KV reuse).
    typed = text + "get_token"
    ctx2 = builder.build(typed, len(typed), 5, s, [("file:///g/glob.py", glob_src), ("file:///s/shlex.py", shlex_src)])
    assert ctx2.head_ids == ctx.head_ids


def test_no_snippets_without_shared_identifiers(builder):
    ctx = builder.build("alpha = beta\n", 13, 1, CompletionSettings(), [("file:///o.py", "gamma = delta\n")])
    assert ctx.head_ids == [builder.special_ids[P.END_OF_TEXT]] and ctx.snippets == []


# ----------------------------------------------------------------------------- token healing

@pytest.mark.parametrize("prefix, ends_with", [
    ("import os\nos.pa", "pa"),                    # half-typed identifier
    ("def f(x):\n    ", "\n    "),                 # indentation of a new line
    ("def f(x):\n\n\n    ", "\n\n\n    "),
    ("total = count + 1\n", "\n"),                 # start of a new line
    ("x = ", " "),                                 # a space belongs to the next word
])
def test_heal_backs_up_over_the_last_pretoken(tok, prefix, ends_with):
    ids = tok.encode(prefix).ids
    h = heal(tok, prefix, ids, policy="always")
    # Exactly the last piece of the tokenizer's own pre-tokenization is removed.
    assert h.removed_text == prefix[last_pretoken_start(tok, prefix):]
    assert h.removed_text.endswith(ends_with)
    assert ids[:len(h.prefix_ids)] == h.prefix_ids and len(h.prefix_ids) < len(ids)
    assert tok.decode(h.prefix_ids) + h.removed_text == prefix


@pytest.mark.parametrize("variant, prefix, heals", [
    ("code", "import os\nos.pa", True),         # half-typed identifier
    ("code", "x = ", True),                     # the space belongs to the next word
    ("code", "total = count + 1\n", True),      # line start: the model writes the indentation
    ("code", "def f(x):\n    ", False),         # after the full indentation: a real boundary
    ("gpt2", "def f(x):\n    ", True),          # GPT-2's regex: "\n   " + " return"
    ("gpt2", "import os\nos.pa", True),
    ("gpt2", "foo(", False),                    # "(" never merges with the next word there
    ("code", "foo(", True),                     # the code pre-tokenizer glues "(" to it
])
def test_boundary_policy_heals_only_split_pretokens_and_line_starts(variant, prefix, heals):
    from conftest import sample_texts
    from trainer.tokenizer import train_tokenizer

    tok = train_tokenizer(sample_texts()[:3], vocab_size=512, variant=variant)
    assert should_heal(tok, prefix) is heals
    h = heal(tok, prefix, tok.encode(prefix).ids)  # the default policy is "boundary"
    assert bool(h.removed_text) is heals


def test_unknown_policy_is_an_error(tok):
    with pytest.raises(ValueError, match="policy"):
        heal(tok, "x", tok.encode("x").ids, policy="sometimes")


def test_heal_never_splits_a_multibyte_character(tok):
    prefix = "name = 'Zoë 😀"
    ids = tok.encode(prefix).ids
    h = heal(tok, prefix, ids, policy="always")
    assert prefix.endswith(h.removed_text) and h.removed_text.endswith("😀")
    assert tok.decode(h.prefix_ids) + h.removed_text == prefix


def test_heal_leaves_long_pretokens_and_empty_prefixes_alone(tok):
    prefix = "x = " + "a" * 200
    ids = tok.encode(prefix).ids
    assert heal(tok, prefix, ids, policy="always").removed_text == ""
    assert heal(tok, "", []).removed_text == ""
