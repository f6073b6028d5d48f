"""Train a byte-level BPE tokenizer for Python code."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codeparrot_ls.prompt import END_OF_TEXT, SPECIAL_TOKENS


def build_pretokenizer(variant: str = "gpt2"):
    if variant == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ValueError(f"unknown pre-tokenization variant {variant!r}")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 32768, variant: str = "gpt2",
                    min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE trained on `texts`; the special tokens get the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = build_pretokenizer(variant)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, output_dir: str | Path, model_max_length: int = 2048) -> Path:
    """Write a folder that both `tokenizers` and `transformers.AutoTokenizer` load."""
    from transformers import PreTrainedTokenizerFast

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != END_OF_TEXT],
        model_max_length=model_max_length,
    )
    fast.save_pretrained(out)
    return out
