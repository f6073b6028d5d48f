"""Token healing: end the prompt at a token boundary the model saw in training.

The cursor often sits inside what the tokenizer would make one token: after the
indentation of a new line (GPT-2's byte-level regex glues a newline and the following
spaces into one piece: `"\\n    return"` is `"\\n   "` + `" return"`), after a half-typed
identifier (`os.pa` - in training the model saw `path`, never `pa` + `th`), or after a
space (`x = ` - in training the space belongs to the next word). Ending the prompt there
asks the model to continue from a split it has never seen, and it does badly.

So we remove the last pre-token of the prefix from the prompt (the tokens that encode
it) and ask the engine to generate text that starts with the removed text
(`GenerationRequest.required_prefix`): the model then writes those characters itself,
with the tokens it prefers, and we strip them from the suggestion again.

When: the default policy ("boundary", `should_heal`) heals only where the cursor splits
a pre-token or sits at the start of a line; healing a prompt that already ends at a
boundary (after a line's full indentation, with the code pre-tokenizer) measured worse,
because the re-typed piece may then be split differently from training
(bench/bench_token_healing.py, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A pre-token longer than this is not healed (the model would have to re-type a lot).
MAX_HEALED_TOKENS = 6
MAX_HEALED_CHARS = 48
_TAIL_CHARS = 256  # pre-tokenize only the end of the prefix


@dataclass
class Healing:
    prefix_ids: list[int]    # the prefix's token ids with the healed tokens removed
    removed_text: str        # what the generated text must start with ("" = nothing healed)


def last_pretoken_start(tokenizer, prefix: str) -> int:
    """Index in `prefix` where its last pre-token (the tokenizer's regex split) starts."""
    tail_start = max(0, len(prefix) - _TAIL_CHARS)
    tail = prefix[tail_start:]
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(tail) if tokenizer.pre_tokenizer else []
    if not pieces:
        return len(prefix)
    return tail_start + pieces[-1][1][0]


POLICIES = ("boundary", "always")
_PROBE = "a"  # what code after the cursor most often starts with: an identifier


def should_heal(tokenizer, prefix: str) -> bool:
    """The "boundary" policy: heal when the cursor splits a pre-token, or when it is at
    the start of a line (in training the line break and the next line's indentation were
    one piece: the model should write the indentation itself). After a line's full
    indentation the code pre-tokenizer has a boundary, and healing measured worse there
    (docs/benchmarks.md)."""
    return prefix.endswith("\n") or cursor_splits_a_pretoken(tokenizer, prefix)


def cursor_splits_a_pretoken(tokenizer, prefix: str) -> bool:
    """Whether code continuing at the cursor (probed with an identifier character) would
    be pre-tokenized into the prefix's last piece, i.e. the cursor is not a boundary the
    model saw in training. With GPT-2's regex the indentation of a new line is such a
    split (`"\n   " + " return"`); with the project's code pre-tokenizer it is not (the
    newline and the whole indentation form one piece and the word starts a new one)."""
    return last_pretoken_start(tokenizer, prefix + _PROBE) != len(prefix)


def heal(tokenizer, prefix: str, prefix_ids: Sequence[int], policy: str = "boundary") -> Healing:
    """Back `prefix_ids` (the encoding of `prefix`) up over the prefix's last pre-token.

    policy "boundary" heals only where it helps (`should_heal`); "always" heals at every
    cursor. Returns the kept ids
    and the removed text, which is exactly `prefix`'s end. When the last pre-token is too
    long, or its tokens cannot be matched to the text (a multi-byte character cut in the
    middle), nothing is removed.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown token healing policy {policy!r}; expected one of {POLICIES}")
    ids = list(prefix_ids)
    if not prefix or not ids:
        return Healing(ids, "")
    if policy == "boundary" and not should_heal(tokenizer, prefix):
        return Healing(ids, "")
    target = len(prefix) - last_pretoken_start(tokenizer, prefix)
    if target <= 0 or target > MAX_HEALED_CHARS:
        return Healing(ids, "")
    for k in range(1, min(MAX_HEALED_TOKENS, len(ids)) + 1):
        removed = tokenizer.decode(ids[-k:], skip_special_tokens=False)
        if len(removed) >= target and prefix.endswith(removed) and "\ufffd" not in removed:
            if len(removed) > MAX_HEALED_CHARS:
                break
            return Healing(ids[:-k], removed)
    return Healing(ids, "")
