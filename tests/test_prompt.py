import pytest

from codeparrot_ls import prompt


@pytest.mark.parametrize("layout", prompt.LAYOUTS)
def test_fim_document_round_trips(layout):
    pre, mid, suf = "def f(x):\n    ret", "urn x + 1", "\n\nprint(f(1))\n"
    doc = prompt.fim_document(pre, mid, suf, layout)
    p, m, s = prompt.split_fim_document(doc)
    assert s == suf
    assert p + m == pre + mid  # SPM keeps prefix and middle contiguous
    if layout == "psm":
        assert (p, m) == (pre, mid)


def test_spm_prompt_extends_while_typing():
    """Typing grows the prefix: in SPM each new prompt extends the previous one."""
    a = prompt.fim_prompt("import o", "\n", "spm")
    b = prompt.fim_prompt("import os", "\n", "spm")
    assert b.startswith(a)


def test_fim_prompt_ids_matches_string_layout():
    ids = {prompt.FIM_PREFIX: 1, prompt.FIM_SUFFIX: 3, prompt.FIM_MIDDLE: 2}
    assert prompt.fim_prompt_ids([10, 11], [20], ids, "psm") == [1, 10, 11, 3, 20, 2]
    assert prompt.fim_prompt_ids([10, 11], [20], ids, "spm") == [1, 3, 20, 2, 10, 11]
    with pytest.raises(ValueError):
        prompt.fim_prompt_ids([], [], ids, "pms")


def test_quality_token_bins():
    assert prompt.quality_token(0.0) == prompt.QUALITY_TOKENS[0]
    assert prompt.quality_token(1.0) == prompt.BEST_QUALITY_TOKEN
    assert prompt.quality_token(7) == prompt.BEST_QUALITY_TOKEN
    assert prompt.quality_token(0.5) == prompt.QUALITY_TOKENS[2]


def test_special_tokens_are_unique_and_eot_first():
    assert len(set(prompt.SPECIAL_TOKENS)) == len(prompt.SPECIAL_TOKENS)
    assert prompt.SPECIAL_TOKENS[0] == prompt.END_OF_TEXT


def test_tiny_fixtures_load(tiny_checkpoint_dir):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = Tokenizer.from_file(str(tiny_checkpoint_dir / "tokenizer.json"))
    assert tok.token_to_id(prompt.END_OF_TEXT) == 0
    assert prompt.supports_fim(tok.get_vocab())
    text = "def f(x):\n        return 'é'\n"
    assert tok.decode(tok.encode(text).ids) == text
    assert AutoTokenizer.from_pretrained(tiny_checkpoint_dir).eos_token == prompt.END_OF_TEXT
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint_dir)
    assert model.config.vocab_size % 64 == 0
