"""The one prompt builder: the server, `codeparrot evaluate` and `codeparrot complete` send the
engine the same token ids for the same document and cursor; every prompt starts like a
training document; the per-request FIM choice. Real tiny tokenizer, real engine."""

from __future__ import annotations

import pytest

from codeparrot_ls import prompt as P
from codeparrot_ls.prompt_builder import PromptBuilder, fim_wanted, suffix_kind
from codeparrot_ls.settings import CompletionSettings
from conftest import PROMPT_SOURCE


@pytest.fixture(scope="module")
def builder(tok):
    return PromptBuilder(tok, P.special_token_ids(tok.get_vocab()), 512, supports_fim=True)


class Recording:
    """A real decoder's `generate`, with the requests it was asked to run written down."""

    def __init__(self, decoder):
        self.requests, self._generate = [], decoder.generate
        decoder.generate = self.generate

    def generate(self, request):
        self.requests.append(request)
        return self._generate(request)


def test_server_evaluation_and_complete_send_identical_prompts(onnx_int8, tmp_path):
    """Would fail as soon as one of the paths framed, budgeted or healed a prompt differently."""
    from codeparrot_ls.completion import Completer
    from trainer import complete as C
    from trainer.evaluate.data import DataStats
    from trainer.evaluate.humaneval import problem_prompt
    from trainer.evaluate.line_completion import build_requests, sample_positions

    (tmp_path / "pprint.py").write_text(PROMPT_SOURCE, encoding="utf-8")
    positions = [p for cursor in ("indent", "random")
                 for p in sample_positions(str(tmp_path), 6, seed=3, cursor=cursor, stats=DataStats())]
    server = Completer(onnx_int8)
    engine = Recording(server.decoder)
    max_new = 12
    for mode, fim in (("off", False), ("spm", True), ("served", None)):
        requests, layouts = build_requests(onnx_int8, positions, mode, max_new, healing=True, suffix_share=0.25)
        settings = CompletionSettings(max_new_tokens=max_new, fim=fim, time_budget_ms=60_000)
        for i, (pos, req, layout) in enumerate(zip(positions, requests, layouts)):
            text = pos.prefix + pos.suffix
            engine.requests.clear()
            server.cache = type(server.cache)()     # a fresh cache: the server must run the model
            # A document of its own: no window kept from an earlier request (`uri` stickiness).
            server.complete(f"file:///{mode}/{i}.py", text, len(pos.prefix), settings, invoked=False)
            sent = engine.requests[-1]
            assert sent.prompt_ids == req.prompt_ids, (mode, pos.line, layout)
            assert sent.required_prefix == req.required_prefix
            assert sent.prompt_ids[0] == onnx_int8.info.eos_id
        expected = [{"off": "l2r", "spm": "spm"}.get(mode) or ("spm" if fim_wanted(p.prefix + p.suffix, len(p.prefix))
                                                            else "l2r") for p in positions]
        assert layouts == expected
    # `codeparrot complete` and HumanEval: the cursor at the end of a document.
    text = PROMPT_SOURCE[:PROMPT_SOURCE.index("def pp(")]
    args = C.CompleteArgs(model="-", max_new_tokens=max_new)
    mine = C.build_request(onnx_int8, text, len(text), args)
    human = problem_prompt(PromptBuilder.for_engine(onnx_int8), text, max_new, healing=True)
    engine.requests.clear()
    server.complete("file:///end.py", text, len(text), CompletionSettings(max_new_tokens=max_new, time_budget_ms=60_000),
                    invoked=False)
    assert engine.requests[-1].prompt_ids == mine.prompt_ids == human.ids


@pytest.mark.parametrize("text, offset", [("", 0), ("x", 0), ("x", 1), ("\n", 1), ("    ", 4)])
def test_an_empty_or_tiny_document_is_a_valid_prompt(builder, text, offset):
    for fim in (None, True, False):
        prompt = builder.build(text, offset, CompletionSettings(fim=fim))
        assert prompt.ids[0] == builder.context.eos_id
        kept = text[:offset - len(prompt.required_prefix)]   # the prefix less what healing re-types
        body = kept if prompt.layout == "l2r" else P.fim_prompt(kept, text[offset:], prompt.layout)
        assert builder.tokenizer.decode(prompt.ids, skip_special_tokens=False) == P.END_OF_TEXT + body


def test_prompt_starts_like_a_training_document_with_snippets_and_quality(tok):
    sp = P.special_token_ids(tok.get_vocab())
    b = PromptBuilder(tok, sp, 512, supports_fim=True, quality_conditioning=True)
    other = ("file:///lib/tools.py", "def parse_lines(text):\n    return [line for line in text.split()]\n")
    text = "from tools import parse_lines\n\nrows = parse_lines(text)\nfor line in rows:\n    "
    prompt = b.build(text, len(text), CompletionSettings(fim=False), [other])
    eos, quality = sp[P.END_OF_TEXT], sp[P.BEST_QUALITY_TOKEN]
    # <|endoftext|> snippets <|endoftext|> <quality> prefix: two documents, as training packs them.
    assert prompt.context.snippets and prompt.ids[0] == eos
    second = prompt.ids.index(eos, 1)
    assert prompt.ids[second + 1] == quality and "# tools.py" in tok.decode(prompt.ids[1:second])


@pytest.mark.parametrize("text, kind", [
    ("x = 1\n|", "none"),
    ("x = foo(|)\n", "line"),
    ("def f(a):\n    |\n    return a\n", "same"),
    ("if a:|\n    b = 1\n", "deeper"),
    ("if a:\n    b = |\nc = 2\n", "shallower"),
    ("def f():\n    |\n\n   \n", "none"),
])
def test_suffix_kinds_and_the_per_request_fim_rule(builder, text, kind):
    offset = text.index("|")
    text = text.replace("|", "")
    assert suffix_kind(text, offset) == kind
    want = kind != "none"
    assert fim_wanted(text, offset) is want
    assert builder.build(text, offset, CompletionSettings()).layout == ("spm" if want else "l2r")
    # An explicit setting wins either way.
    assert builder.build(text, offset, CompletionSettings(fim=True)).layout == "spm"
    assert builder.build(text, offset, CompletionSettings(fim=False)).layout == "l2r"


def test_a_model_that_measured_fim_worse_is_prompted_left_to_right_unless_asked(tok, builder):
    prefers_l2r = PromptBuilder(tok, builder.context.special_ids, 512, supports_fim=True, fim_default=False)
    text, offset = "def f(a):\n    \n    return a\n", 14
    assert prefers_l2r.build(text, offset, CompletionSettings()).layout == "l2r"
    assert prefers_l2r.build(text, offset, CompletionSettings(fim=True)).layout == "spm"
    no_fim_tokens = PromptBuilder(tok, {P.END_OF_TEXT: 0}, 512, supports_fim=False)
    assert no_fim_tokens.build(text, offset, CompletionSettings(fim=True)).layout == "l2r"


def test_a_cursor_outside_the_document_is_an_error(builder):
    with pytest.raises(ValueError, match="outside"):
        builder.build("x = 1", 6, CompletionSettings())
