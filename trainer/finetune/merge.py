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

from trainer.finetune.data import selection_records

SHARES = (1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1)
MERGE_FILE = "merge.json"
SELECTION_BYTES = 150_000   # ~45 k tokens: a few seconds a share on a CPU


def mean_loss(model, sequences: list[list[int]], window: int) -> float:
    """Mean next-token loss (nats) over `sequences`, each read in windows of `window` tokens."""
    import torch

    nats, count = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            for start in range(0, len(ids) - 1, window):
                chunk = torch.tensor([ids[start:start + window + 1]])
                logits = model(chunk[:, :-1]).logits[0].float()
                nats += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
                count += chunk.shape[1] - 1
    return nats / max(1, count)


def _encode(texts: list[str], tokenizer_file: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    from codeparrot_ls.prompt import END_OF_TEXT

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.encode_special_tokens = True   # a docstring that spells a special token stays text
    eos = tok.token_to_id(END_OF_TEXT)
    return [[eos, *e.ids] for e in tok.encode_batch(texts, add_special_tokens=False)]


def choose_share(start: Path, tuned: Path, texts: list[str], budget: float) -> tuple[float, list[dict], dict]:
    """(share, the perplexity at each share tried, the weights at that share)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tuned, dtype=torch.float32).eval()
    tuned_state = {k: v.clone() for k, v in model.state_dict().items()}
    start_state = GPT2LMHeadModel.from_pretrained(start, dtype=torch.float32).state_dict()
    sequences = _encode(texts, tuned / "tokenizer.json")
    window = model.config.n_positions

    def at(share: float) -> dict:
        return {k: share * v + (1 - share) * start_state[k] if v.is_floating_point() else v
                for k, v in tuned_state.items()}

    model.load_state_dict(at(0.0))
    reference = math.exp(mean_loss(model, sequences, window))
    tried = [{"share": 0.0, "perplexity": round(reference, 3)}]
    for share in SHARES:
        weights = at(share)
        model.load_state_dict(weights)
        ppl = math.exp(mean_loss(model, sequences, window))
        tried.append({"share": share, "perplexity": round(ppl, 3)})
        if ppl <= reference * (1 + budget):
            return share, tried, weights
    return 0.0, tried, at(0.0)


def merge(start: Path, tuned: Path, output: Path, budget: float, seed: int) -> dict:
    """Writes the interpolated checkpoint to `output` (a copy of `tuned` with the new weights
    and merge.json); renamed into place once complete. Returns what merge.json holds."""
    import torch
    from transformers import GPT2LMHeadModel

    scratch = output.with_name(".selection-" + output.name)
    texts = [r["content"] for r in selection_records(SELECTION_BYTES, seed, scratch)]
    share, tried, weights = choose_share(start, tuned, texts, budget)
    tmp = output.with_name(".tmp-" + output.name)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tuned, tmp)
    model = GPT2LMHeadModel.from_pretrained(tuned, dtype=torch.float32)
    model.load_state_dict(weights)
    model.save_pretrained(tmp)
    info = {"share": share, "budget": budget, "selection_files": len(texts), "tried": tried}
    (tmp / MERGE_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(output, ignore_errors=True)
    os.rename(tmp, output)
    return info
