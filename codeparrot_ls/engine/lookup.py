"""Prompt-lookup drafts for greedy decoding.

Code repeats itself: names, call patterns, closing brackets. Before a decode pass, the tokens
that followed the latest earlier occurrence of the last one to three tokens (in the prompt or
the output so far) are a cheap guess at what comes next; the decode loop feeds the guess in the
same pass as the real token and keeps the part the model's own greedy choices agree with
(`codeparrot_ls.engine.decoding`). No second model, no training: a guess costs a few more
positions in a pass that is bound by reading the weights anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOOKUP_NGRAM = 3   # the longest run of last tokens matched
DEFAULT_DRAFT_TOKENS = 4   # draft tokens a greedy pass checks besides the real one
# After drafts kept whole the draft doubles, up to this many times lookup_tokens (Row.drafted).
# A pass of 17 tokens costs ~2.3x a one-token step at 800 positions, 4 passes of 5 ~5.9x.
MAX_DRAFT_GROWTH = 4


class PromptLookup:
    """Drafts for one sequence: its prompt, then the tokens generated after it."""

    def __init__(self, prompt_ids: Sequence[int], max_new_tokens: int):
        self.n_prompt = len(prompt_ids)
        self.ids = np.empty(self.n_prompt + max(0, max_new_tokens) + 1, np.int64)
        self.ids[:self.n_prompt] = prompt_ids

    def draft(self, generated: Sequence[int], room: int) -> list[int]:
        """Up to `room` tokens that followed the latest, longest earlier match of the last tokens."""
        n = self.n_prompt + len(generated)
        if room <= 0 or not generated or n > len(self.ids):
            return []
        self.ids[self.n_prompt:n] = generated
        seq = self.ids[:n]
        hits = np.flatnonzero(seq[:-1] == seq[-1])    # earlier places of the last token
        if not len(hits):
            return []
        # How many of the last tokens match before each place (up to LOOKUP_NGRAM).
        match = np.ones(len(hits), np.int64)
        agree = np.ones(len(hits), bool)
        for back in range(1, min(LOOKUP_NGRAM, n)):
            agree &= (hits >= back) & (seq[hits - back] == seq[n - 1 - back])
            match[agree] = back + 1
        best_hits = hits[match == match.max()]
        # Then the one with the longest draft after it (in a run of one repeated token the
        # latest place is the one before last, with a single token after it), then the latest.
        after = np.minimum(room, n - 1 - best_hits)
        best = int(best_hits[after == after.max()][-1])
        return seq[best + 1:best + 1 + room].tolist()
