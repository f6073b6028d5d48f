"""CodeXGLUE-style line completion on held-out files: the number closest to what
an editor user feels.

Positions (reproducible: the same seed and data give the same positions):
a candidate line is a non-blank line, not the file's first, whose text after the
indentation has at least `MIN_TARGET_CHARS` characters. `positions` of them are
drawn uniformly (without replacement) from all candidate lines of all files.
The cursor goes

* `indent` (default, CodeXGLUE's task): right after the line's indentation, so the
  whole statement is predicted;
* `random`: at a uniformly drawn character inside the line's text (after the
  indentation), so the rest of the line is predicted.

The target is the rest of the line without trailing whitespace. The prompt is
END_OF_TEXT + everything before the cursor (left-truncated to the context
budget); with FIM, the suffix is everything after the line (from its newline on,
right-truncated) in the layout of codeparrot_ls.prompt.fim_prompt_ids. Decoding
is greedy and stops at the first newline.

Left-to-right prompts are token-healed (codeparrot_ls.healing): the last
pre-token before the cursor is removed from the prompt and the model must
re-type it, because a prompt ending inside what training saw as one token
(indentation after a newline, half an identifier) is a split the model never
saw. That text often is the newline and the indentation; the engine only stops
at a "\n" that ends after it. FIM prompts need no
healing: training cut FIM pieces at random characters and tokenized them apart.

Scores: exact match = the whitespace-split tokens of prediction and target are
equal; edit similarity = rapidfuzz `fuzz.ratio` (the Levenshtein-based ratio
CodeXGLUE uses, 0-100) of the stripped strings.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass

from rapidfuzz import fuzz

from codeparrot_ls.engine import GenerationRequest
from codeparrot_ls.prompt import fim_prompt_ids
from trainer.eval_common import encode, prompt_start
from trainer.eval_data import DataStats, iter_documents

MIN_TARGET_CHARS = 4
CURSORS = ("indent", "random")


@dataclass
class Position:
    document: str
    line: int            # 0-based line number
    prefix: str          # text before the cursor
    target: str          # rest of the line (what the model should write), trailing whitespace removed
    suffix: str          # text after the line, from its newline on


def exact_match(prediction: str, target: str) -> bool:
    return prediction.split() == target.split()


def edit_similarity(prediction: str, target: str) -> float:
    return float(fuzz.ratio(prediction.strip(), target.strip()))


def candidate_lines(text: str) -> list[int]:
    lines = text.split("\n")
    return [i for i, line in enumerate(lines) if i > 0 and len(line.strip()) >= MIN_TARGET_CHARS]


def sample_positions(data: str, count: int, seed: int, cursor: str, stats: DataStats) -> list[Position]:
    if cursor not in CURSORS:
        raise ValueError(f"unknown cursor placement {cursor!r}; expected one of {CURSORS}")
    docs = list(iter_documents(data, stats))
    candidates = [(d, i) for d, (_, text) in enumerate(docs) for i in candidate_lines(text)]
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(len(candidates)), min(count, len(candidates))))
    out = []
    for p in picks:
        d, i = candidates[p]
        name, text = docs[d]
        lines = text.split("\n")
        line = lines[i].rstrip()
        indent = len(line) - len(line.lstrip())
        col = indent if cursor == "indent" else indent + rng.randrange(len(line) - indent)
        start = sum(len(x) + 1 for x in lines[:i])
        suffix = "\n" + "\n".join(lines[i + 1:]) if i + 1 < len(lines) else ""
        out.append(Position(name, i, text[:start + col], line[col:], suffix))
    return out


def left_to_right_prompt(engine, pos: Position, budget: int, healing: bool) -> tuple[list[int], str]:
    """(prompt ids, text the generation must start with)."""
    tok = engine.tokenizer
    ids = encode(tok, pos.prefix)
    required = ""
    if healing and ids:
        from codeparrot_ls.healing import heal

        healed = heal(tok, pos.prefix, ids)
        ids, required = healed.prefix_ids, healed.removed_text
    ids = prompt_start(engine) + ids
    return ids[-budget:], required


def fim_prompt(engine, pos: Position, budget: int, layout: str, suffix_share: float) -> list[int]:
    tok = engine.tokenizer
    prefix_ids, suffix_ids = encode(tok, pos.prefix), encode(tok, pos.suffix)
    start = prompt_start(engine)
    room = budget - 3 - len(start)  # the three FIM tokens
    take_suffix = min(len(suffix_ids), max(int(room * suffix_share), room - len(prefix_ids)))
    take_prefix = min(len(prefix_ids), room - take_suffix)
    prefix_ids = prefix_ids[len(prefix_ids) - take_prefix:]
    return start + fim_prompt_ids(prefix_ids, suffix_ids[:take_suffix],
                                                   engine.info.special_ids, layout)


def run_mode(engine, positions: list[Position], mode: str, max_new_tokens: int, batch_size: int,
             healing: bool, suffix_share: float) -> tuple[dict, list[dict]]:
    """Generate and score every position in one mode ("off" = left to right, or a FIM layout)."""
    from codeparrot_ls.engine.decoding import generate_batch

    budget = engine.info.n_positions - max_new_tokens
    requests = []
    for pos in positions:
        if mode == "off":
            ids, required = left_to_right_prompt(engine, pos, budget, healing)
        else:
            ids, required = fim_prompt(engine, pos, budget, mode, suffix_share), ""
        requests.append(GenerationRequest(prompt_ids=ids, max_new_tokens=max_new_tokens, temperature=0.0,
                                          stop=("\n",), required_prefix=required))
    # Batches: similar lengths together (less padding). One at a time: file order, so the
    # engine's KV prefix cache serves the part a prompt shares with the previous one.
    # Either way the order is a pure function of the prompts: results are reproducible.
    order = list(range(len(requests)))
    if batch_size > 1:
        order.sort(key=lambda i: (len(requests[i].prompt_ids), i))
    generations = [None] * len(requests)
    start = time.monotonic()
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        if batch_size == 1:
            outs = engine.generate(requests[chunk[0]])[:1]
        else:
            outs = generate_batch(engine, [requests[i] for i in chunk])
        for i, g in zip(chunk, outs):
            generations[i] = g
    seconds = time.monotonic() - start
    samples, em, es, reasons, prompt_tokens = [], 0, 0.0, Counter(), 0
    for pos, req, gen in zip(positions, requests, generations):
        prediction = gen.text[len(req.required_prefix):] if gen.text.startswith(req.required_prefix) else gen.text
        hit, sim = exact_match(prediction, pos.target), edit_similarity(prediction, pos.target)
        em += hit
        es += sim
        reasons[gen.finish_reason] += 1
        prompt_tokens += gen.prompt_tokens
        samples.append({"document": pos.document, "line": pos.line + 1, "target": pos.target,
                        "prediction": prediction, "exact_match": hit, "edit_similarity": sim,
                        "finish_reason": gen.finish_reason})
    n = len(positions)
    summary = {
        "positions": n,
        "exact_match": 100.0 * em / n if n else float("nan"),
        "edit_similarity": es / n if n else float("nan"),
        "mean_prompt_tokens": prompt_tokens / n if n else 0.0,
        "finish_reasons": dict(reasons),
        "seconds": seconds,
        "ms_per_position": 1e3 * seconds / n if n else 0.0,
    }
    return summary, samples


def evaluate_line_completion(engine, data: str, positions: int = 500, seed: int = 0, cursor: str = "indent",
                             fim: str = "both", layout: str = "psm", max_new_tokens: int = 64,
                             batch_size: int = 8, healing: bool = True, suffix_share: float = 0.25) -> dict:
    if fim not in ("both", "on", "off"):
        raise ValueError(f"--fim must be both, on or off, got {fim!r}")
    stats = DataStats()
    picked = sample_positions(data, positions, seed, cursor, stats)
    if not picked:
        raise ValueError(f"no candidate lines in {data}")
    modes = []
    if fim in ("both", "off"):
        modes.append("off")
    notes = []
    if fim in ("both", "on"):
        if engine.info.supports_fim:
            modes.append(layout)
        elif fim == "on":
            raise ValueError("--fim on: this model's tokenizer has no FIM tokens")
        else:
            notes.append("the model has no FIM tokens: FIM skipped")
    results, samples = {}, {}
    for mode in modes:
        name = "no_fim" if mode == "off" else f"fim_{mode}"
        results[name], samples[name] = run_mode(engine, picked, mode, max_new_tokens, batch_size, healing,
                                                suffix_share)
    return {"results": results, "data": stats.as_dict(), "samples": samples, "notes": notes,
            "settings": {"positions": positions, "seed": seed, "cursor": cursor, "fim": fim, "layout": layout,
                         "max_new_tokens": max_new_tokens, "batch_size": batch_size, "token_healing": healing,
                         "suffix_share": suffix_share, "min_target_chars": MIN_TARGET_CHARS}}
