"""Text fitted to a token budget with the model's tokenizer: token counts of single lines,
cached (lines repeat across requests while typing), and the windows of lines around the
cursor grown outward while they fit, so a request re-encodes only the lines it has not
seen before plus the final pieces once.

When a document does not fit, the prefix window keeps its first line from one request to
the next while it fits (`grow_prefix`), so successive prompts while typing share everything
but their end (for the engine's KV prefix reuse).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

REFIT_SHARE = 0.9
STICKY_MIN_SHARE = 0.75


class TokenCounter:
    """Token counts of single lines, cached (lines repeat across requests while typing).

    The cache is bounded in bytes, not entries: its keys are whole lines, and a line can be
    long (up to a document window, see `ContextBuilder.window`). When full it starts over.
    """

    def __init__(self, tokenizer, max_bytes: int = 4 << 20):
        self.tokenizer = tokenizer
        self.max_bytes = max_bytes
        self.bytes = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        # No token covers more characters than its longest spelling (byte-level BPE: bytes >= characters).
        self.max_token_chars = max(map(len, tokenizer.get_vocab(with_added_tokens=False)), default=1)

    def counts(self, pieces: Sequence[str]) -> list[int]:
        with self._lock:
            known = [self._counts.get(p) for p in pieces]
        missing = list(dict.fromkeys(p for p, c in zip(pieces, known) if c is None))
        if not missing:
            return known
        encoded = self.tokenizer.encode_batch(missing, add_special_tokens=False)
        found = {p: len(e.ids) for p, e in zip(missing, encoded)}
        size = sum(map(_entry_bytes, missing))
        with self._lock:
            if self.bytes + size > self.max_bytes:
                self._counts.clear()
                self.bytes = 0
            if size <= self.max_bytes:
                self._counts.update(found)
                self.bytes += size
        return [found[p] if c is None else c for p, c in zip(pieces, known)]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def too_long(self, piece: str, budget: int) -> bool:
        # More characters than `budget` tokens can cover need no tokenizing to know.
        return len(piece) > budget * self.max_token_chars or self.counts([piece])[0] > budget

    def fit_chars(self, piece: str, budget: int, keep_end: bool) -> tuple[str, list[int]]:
        """The longest end (or start) of one long line that fits `budget` tokens, cut at a
        character (never inside a UTF-8 sequence)."""
        n = min(len(piece), budget * 4)
        while True:
            cut = piece[len(piece) - n:] if keep_end else piece[:n]
            ids = self.encode(cut)
            if len(ids) <= budget or n == 0:
                return cut, ids
            n = min(n - 1, n * budget // len(ids))


def _entry_bytes(key: str) -> int:
    return sys.getsizeof(key) + 64    # + the dict slot and the count


def grow_prefix(counter: TokenCounter, text: str, offset: int, line_start: int, line: int, budget: int,
                sticky_line: int | None = None) -> tuple[str, list[int], int, bool]:
    """Lines above the cursor, nearest first, while they fit. Returns
    (text, ids, first line, whether the document start was reached).

    When the document does not fit, a fresh window fills only `REFIT_SHARE` of the
    budget, and the next request keeps the same first line (`sticky_line`) while it
    still fits and fills at least `STICKY_MIN_SHARE`: typing then only appends to the
    prompt, for many characters in a row, instead of moving its start every few tokens.
    """
    head = text[line_start:offset]
    if counter.too_long(head, budget):  # one huge line: keep its end
        head, ids = counter.fit_chars(head, budget, keep_end=True)
        return head, ids, line, False
    cum = [counter.counts([head])[0]]   # cum[k]: tokens with k lines above
    starts = [line_start]
    done = line_start == 0
    while not done and cum[-1] <= budget:
        batch, p = [], starts[-1]
        while p > 0 and len(batch) < 64:  # count lines in batches: one tokenizer call each
            s = text.rfind("\n", 0, p - 1) + 1
            batch.append((s, text[s:p]))
            p = s
        for (s, _), c in zip(batch, counter.counts([b for _, b in batch])):
            cum.append(cum[-1] + c)
            starts.append(s)
            if cum[-1] > budget:
                break
        done = starts[-1] == 0 and cum[-1] <= budget
    if done:
        n_above = len(cum) - 1
    else:
        fit = max(k for k in range(len(cum)) if cum[k] <= budget)
        k_sticky = None if sticky_line is None else line - sticky_line
        if k_sticky is not None and 0 <= k_sticky <= fit and cum[k_sticky] >= STICKY_MIN_SHARE * budget:
            n_above = k_sticky
        else:
            n_above = max(k for k in range(fit + 1) if k == 0 or cum[k] <= REFIT_SHARE * budget)
    pos = starts[n_above]
    prefix = text[pos:offset]
    ids = counter.encode(prefix)
    while len(ids) > budget and pos < line_start:  # per-line counts are an estimate
        pos = text.find("\n", pos) + 1
        n_above -= 1
        prefix = text[pos:offset]
        ids = counter.encode(prefix)
    return prefix, ids, line - n_above, done


def grow_suffix(counter: TokenCounter, text: str, offset: int, line_end: int, line: int,
                budget: int) -> tuple[str, list[int], int, bool]:
    """Lines below the cursor while they fit. Returns (text, ids, last line, end reached)."""
    if budget <= 0:
        return "", [], line, offset == len(text)
    tail = text[offset:line_end]
    if counter.too_long(tail, budget):
        tail, ids = counter.fit_chars(tail, budget, keep_end=False)
        return tail, ids, line, False
    used = counter.counts([tail])[0]
    pos, n_below, done = line_end, 0, line_end >= len(text)
    while not done:
        batch, p = [], pos
        while p < len(text) and len(batch) < 64:
            e = text.find("\n", p + 1)
            e = len(text) if e < 0 else e
            batch.append((e, text[p:e]))  # "\n" + the next line
            p = e
        stop = False
        for (e, piece), c in zip(batch, counter.counts([b for _, b in batch])):
            if used + c > budget:
                stop = True
                break
            used += c
            pos, n_below = e, n_below + 1
        done = pos >= len(text)
        if stop:
            break
    suffix = text[offset:pos]
    ids = counter.encode(suffix)
    while len(ids) > budget and pos > line_end:
        pos = text.rfind("\n", 0, pos)
        n_below -= 1
        suffix = text[offset:pos]
        ids = counter.encode(suffix)
    return suffix, ids, line + n_below, done
