"""Build a fresh GPT-2-style model from a size preset."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from codeparrot_ls.prompt import END_OF_TEXT

# name -> GPT2Config fields. "small" and "xl" are the seed's 111M and 1.5B models.
PRESETS = {
    "test": dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
    "tiny": dict(n_layer=4, n_embd=256, n_head=4, n_positions=512),
    "mini": dict(n_layer=6, n_embd=512, n_head=8, n_positions=1024),
    "small": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
    "xl": dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024),
}


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def build_config(preset: str, vocab_size: int, eos_id: int, **overrides) -> GPT2Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown model size {preset!r}; expected one of {sorted(PRESETS)}")
    fields = {**PRESETS[preset], **overrides}
    return GPT2Config(
        vocab_size=padded_vocab_size(vocab_size),
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        tie_word_embeddings=True,
        **fields,
    )


def build_model(preset: str, tokenizer, **overrides) -> GPT2LMHeadModel:
    """A randomly initialised model sized for `tokenizer` (a `tokenizers.Tokenizer`)."""
    eos_id = tokenizer.token_to_id(END_OF_TEXT)
    return GPT2LMHeadModel(build_config(preset, tokenizer.get_vocab_size(), eos_id, **overrides))
