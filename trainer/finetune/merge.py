"""The forgetting guard: the fine-tuned weights interpolated back toward the starting ones.

Fine-tuning a small model on one repository for a few hundred steps makes it much better
on that repository and much worse on Python in general; replay (trainer/finetune/data.py)
slows the loss but does not stop it. A straight line between the starting weights and the
fine-tuned ones (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022) keeps most
of the gain for a fraction of the forgetting. The share of the fine-tuned weights is the
largest of `SHARES` whose perplexity on a selection set of general code rises by at most
`budget`. That set is standard-library code the starting model trained on, drawn from the
other end of the replay draw (so never a replayed file) and never the general set the
before/after table reports. Code the model trained on forgets more slowly than code it never
saw (measured: +2 % on the one came with +10 % on the other), hence the small default budget.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from trainer.evaluate.common import document_start, encode
from trainer.evaluate.perplexity import PerplexityTotals, score_ids
from trainer.finetune.data import selection_records

SHARES = (1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1)
MERGE_FILE = "merge.json"
SELECTION_BYTES = 150_000   # ~45 k tokens: a few seconds a share on a CPU


def selection_perplexity(engine, sequences: list[list[int]]) -> float:
    """Perplexity of `sequences` under the engine's current weights, in windows that do not
    overlap (the evaluation's scoring, at half its cost: only the ranking of shares matters)."""
    context = engine.info.n_positions
    totals = PerplexityTotals()
    for ids in sequences:
        score_ids(engine, ids, context, context, totals)
    return math.exp(totals.nats / max(1, totals.tokens))


def choose_share(engine, start: Path, texts: list[str], budget: float) -> tuple[float, list[dict]]:
    """Loads into `engine` (a TorchEngine on the fine-tuned checkpoint) the weights at the
    largest share within `budget`; returns that share and the perplexity at each share tried."""
    import torch
    from transformers import GPT2LMHeadModel

    model = engine.model
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    begin = GPT2LMHeadModel.from_pretrained(start, dtype=torch.float32).state_dict()
    sequences = [document_start(engine) + encode(engine.tokenizer, t) for t in texts]

    def load(share: float) -> float:
        model.load_state_dict({k: share * v + (1 - share) * begin[k] if v.is_floating_point() else v
                               for k, v in tuned.items()})
        return selection_perplexity(engine, sequences)

    reference = load(0.0)
    tried = [{"share": 0.0, "perplexity": round(reference, 3)}]
    for share in SHARES:
        ppl = load(share)
        tried.append({"share": share, "perplexity": round(ppl, 3)})
        if ppl <= reference * (1 + budget):
            return share, tried
    load(0.0)
    return 0.0, tried


def merge(start: Path, tuned: Path, output: Path, budget: float, seed: int) -> dict:
    """Writes the interpolated checkpoint to `output` (a copy of `tuned` with the new weights
    and merge.json); renamed into place once complete. Returns what merge.json holds."""
    from codeparrot_ls.engine.torch_engine import TorchEngine

    scratch = output.with_name(".selection-" + output.name)
    texts = [r["content"] for r in selection_records(SELECTION_BYTES, seed, scratch)]
    engine = TorchEngine(tuned)
    share, tried = choose_share(engine, start, texts, budget)
    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tuned, tmp)
    engine.model.save_pretrained(tmp)
    info = {"share": share, "budget": budget, "selection_files": len(texts), "tried": tried}
    (tmp / MERGE_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(output, ignore_errors=True)
    os.rename(tmp, output)
    return info
