"""Perplexity and bits per character of held-out Python files.

Each file is scored as training saw it: its tokens follow an END_OF_TEXT token
(the separator between packed documents), and every token of the file is
predicted once. A file longer than the context is scored with a sliding window:
each window re-reads up to `context` earlier tokens and scores only the `stride`
tokens not scored yet, so a smaller stride gives every token more context at the
price of more compute.

Bits per character = total loss in nats / ln 2 / number of characters of the
files: it does not depend on the tokenizer, so models with different
vocabularies compare.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from trainer.evaluate.common import document_start, encode
from trainer.evaluate.data import DataStats, iter_documents


@dataclass
class PerplexityTotals:
    nats: float = 0.0
    tokens: int = 0
    chars: int = 0
    documents: int = 0
    forward_calls: int = 0

    def summary(self) -> dict:
        mean = self.nats / self.tokens if self.tokens else float("nan")
        try:
            ppl = math.exp(mean)
        except OverflowError:
            ppl = float("inf")
        bpc = self.nats / math.log(2) / self.chars if self.chars else float("nan")
        return {"loss": mean, "perplexity": ppl, "bits_per_char": bpc, "tokens": self.tokens,
                "chars": self.chars, "documents": self.documents, "forward_calls": self.forward_calls}


def token_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row of `logits` [n, vocab], computed in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x - top).sum(axis=-1)) + top[:, 0]
    return log_z - x[np.arange(len(targets)), targets]


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first_target, end) for a sequence of `n_tokens` ids.

    The window feeds ids[begin:end-1] and scores targets ids[first_target:end]; targets
    start at index 1 (index 0 is the END_OF_TEXT context token). Every target is scored
    exactly once and the window never exceeds `context` inputs.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    out = []
    scored = 1
    while scored < n_tokens:
        end = min(n_tokens, scored + (context if scored == 1 else stride))
        begin = max(0, end - 1 - context)
        out.append((begin, scored, end))
        scored = end
    return out


def score_ids(engine, ids: list[int], context: int, stride: int, totals: PerplexityTotals) -> float:
    """Add the loss of `ids[1:]` given the preceding ids; returns this sequence's nats."""
    arr = np.asarray(ids, dtype=np.int64)
    nats = 0.0
    for begin, first, end in windows(len(ids), context, stride):
        inputs = arr[begin:end - 1][None, :]
        keep = end - first
        logits, _ = engine.forward(inputs, None, logits_to_keep=keep)
        nats += float(token_nats(logits[0], arr[first:end]).sum())
        totals.tokens += keep
        totals.forward_calls += 1
    totals.nats += nats
    return nats


def evaluate_perplexity(engine, data: str, context: int | None = None, stride: int | None = None,
                        limit: int | None = None) -> dict:
    n_positions = engine.info.n_positions
    context = min(context or n_positions, n_positions)
    stride = stride or max(1, context // 2)
    stats, totals = DataStats(), PerplexityTotals()
    start = time.monotonic()
    for _, text in iter_documents(data, stats):
        if limit is not None and totals.documents >= limit:
            break
        ids = document_start(engine) + encode(engine.tokenizer, text)
        score_ids(engine, ids, context, stride, totals)
        totals.documents += 1
        totals.chars += len(text)
    seconds = time.monotonic() - start
    results = totals.summary()
    results["tokens_per_second"] = totals.tokens / seconds if seconds > 0 else None
    return {"results": results, "data": stats.as_dict(),
            "settings": {"context": context, "stride": stride, "limit": limit},
            "timings": {"seconds": seconds}}
