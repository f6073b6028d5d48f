"""Special tokens and the prompt layout, defined once for training and serving.

The trainer imports everything here; the server uses the same functions to build
its prompts, so the two can never disagree about how a fill-in-the-middle prompt
looks.

Fill-in-the-middle (Bavarian et al., 2022) has two layouts:

* PSM: ``<fim_prefix>prefix<fim_suffix>suffix<fim_middle>middle``
* SPM: ``<fim_prefix><fim_suffix>suffix<fim_middle>prefix middle``

In SPM the prefix and the middle are contiguous, so while the user types (the
prefix grows at its end and the suffix stays the same) each new prompt extends
the previous one and its KV cache can be reused.
"""

from __future__ import annotations

from collections.abc import Sequence

END_OF_TEXT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)

# Quality conditioning: a token at the start of a document says how clean the
# corpus heuristics judged it; at inference the best one steers the model.
QUALITY_TOKENS = ("<quality_0>", "<quality_1>", "<quality_2>", "<quality_3>", "<quality_4>")

# Order matters: the tokenizer gives these the first ids, so END_OF_TEXT is id 0.
SPECIAL_TOKENS = (END_OF_TEXT, *FIM_TOKENS, *QUALITY_TOKENS)

LAYOUTS = ("psm", "spm")
# Sentinel tokens a FIM prompt adds to its prefix and suffix (<fim_prefix>, <fim_suffix>, <fim_middle>).
FIM_PROMPT_TOKENS = 3

# Where a Python suggestion ends: a blank line or a new top-level statement.
PYTHON_STOP_SEQUENCES = (
    "\n\n\n",
    "\nclass ",
    "\ndef ",
    "\n#",
    "\n@",
    "\nif __name__",
    "\nimport ",
    "\nfrom ",
    "\nprint(",
)

# HumanEval's stop sequences (from the benchmark's own evaluation recipe).
HUMANEVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")


def quality_token(quality: float) -> str:
    """The quality token for a score in [0, 1] (out-of-range scores are clamped)."""
    q = min(max(float(quality), 0.0), 1.0)
    return QUALITY_TOKENS[min(int(q * len(QUALITY_TOKENS)), len(QUALITY_TOKENS) - 1)]


BEST_QUALITY_TOKEN = QUALITY_TOKENS[-1]


def fim_prompt(prefix: str, suffix: str, layout: str = "psm") -> str:
    """A prompt asking for the middle between ``prefix`` and ``suffix``."""
    if layout == "psm":
        return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"
    if layout == "spm":
        return f"{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}"
    raise ValueError(f"unknown FIM layout {layout!r}; expected one of {LAYOUTS}")


def fim_document(prefix: str, middle: str, suffix: str, layout: str = "psm") -> str:
    """A training document: the prompt for (prefix, suffix) followed by the middle."""
    return fim_prompt(prefix, suffix, layout) + middle


def fim_prompt_ids(
    prefix_ids: Sequence[int], suffix_ids: Sequence[int], token_ids: dict[str, int], layout: str = "psm"
) -> list[int]:
    """Token-level ``fim_prompt``: pieces tokenized separately, joined by FIM token ids.

    Tokenizing the pieces separately means source text that happens to contain a
    special token's spelling can never turn into that special token.
    """
    pre, suf, mid = token_ids[FIM_PREFIX], token_ids[FIM_SUFFIX], token_ids[FIM_MIDDLE]
    if layout == "psm":
        return [pre, *prefix_ids, suf, *suffix_ids, mid]
    if layout == "spm":
        return [pre, suf, *suffix_ids, mid, *prefix_ids]
    raise ValueError(f"unknown FIM layout {layout!r}; expected one of {LAYOUTS}")


def fim_document_ids(
    prefix_ids: Sequence[int],
    middle_ids: Sequence[int],
    suffix_ids: Sequence[int],
    token_ids: dict[str, int],
    layout: str = "psm",
) -> list[int]:
    """Token-level ``fim_document``."""
    return fim_prompt_ids(prefix_ids, suffix_ids, token_ids, layout) + list(middle_ids)


def split_fim_document(text: str) -> tuple[str, str, str]:
    """Inverse of ``fim_document``: (prefix, middle, suffix) from either layout."""
    if not text.startswith(FIM_PREFIX):
        raise ValueError("not a FIM document: it does not start with " + FIM_PREFIX)
    body = text[len(FIM_PREFIX):]
    if body.startswith(FIM_SUFFIX):  # SPM
        suffix, sep, rest = body[len(FIM_SUFFIX):].partition(FIM_MIDDLE)
        if not sep:
            raise ValueError("SPM document without " + FIM_MIDDLE)
        return "", rest, suffix  # prefix and middle are contiguous in SPM
    prefix, sep, rest = body.partition(FIM_SUFFIX)
    suffix, sep2, middle = rest.partition(FIM_MIDDLE)
    if not (sep and sep2):
        raise ValueError("PSM document without " + FIM_SUFFIX + " or " + FIM_MIDDLE)
    return prefix, middle, suffix


def special_token_ids(vocab: dict[str, int]) -> dict[str, int]:
    """Ids of the special tokens present in a vocabulary (token -> id)."""
    return {tok: vocab[tok] for tok in SPECIAL_TOKENS if tok in vocab}


def supports_fim(vocab: dict[str, int]) -> bool:
    return all(tok in vocab for tok in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX))
