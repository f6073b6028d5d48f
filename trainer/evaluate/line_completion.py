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

The target is the rest of the line without trailing whitespace. The document the
model sees is the file with the target taken out (everything before the cursor, then
the file from the line's end on), and its prompt comes from the language server's own
builder (codeparrot_ls.prompt_builder.PromptBuilder, with the server's settings:
budget, suffix share, token healing, `<|endoftext|>` first), so the scores measure
exactly what the editor gets. Decoding is greedy and stops at the first newline after
the re-typed (healed) text.

Modes (`--fim`): `off` = left to right (the `no_fim` column), `on` = FIM in
`--fim-layout` (`fim_<layout>`), `both` = the two of them plus `as_served`: the server's
per-request choice (`fim` null: codeparrot_ls.prompt_builder.fim_wanted and the model's
export.json default) in the server's layout. A prompt already run in another mode is not
run again. Each column is also broken down by where the code after the cursor is
(`by_suffix`, codeparrot_ls.prompt_builder.suffix_kind).

Scores: exact match = the whitespace-split tokens of prediction and target are
equal; edit similarity = rapidfuzz `fuzz.ratio` (the Levenshtein-based ratio
CodeXGLUE uses, 0-100) of the stripped strings.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, replace

from rapidfuzz import fuzz

from codeparrot_ls.engine import Decoder, GenerationRequest
from codeparrot_ls.prompt_builder import SERVED_LAYOUT, SUFFIX_KINDS, PromptBuilder, suffix_kind
from trainer.evaluate.data import DataStats, iter_documents

MIN_TARGET_CHARS = 4
CURSORS = ("indent", "random")
AFTER_CURSOR = ("file", "none")


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


MODES = ("off", "spm", "psm", "served")


def mode_name(mode: str) -> str:
    return {"off": "no_fim", "served": "as_served"}.get(mode, f"fim_{mode}")


def completion_settings(max_new_tokens: int, healing: bool, suffix_share: float, fim: bool | None):
    """The server's default settings, with what the evaluation varies."""
    from codeparrot_ls.settings import CompletionSettings

    return CompletionSettings(max_new_tokens=max_new_tokens, token_healing=healing, suffix_share=suffix_share,
                              fim=fim)


def position_prompt(builder, pos: Position, settings):
    """The server's prompt for the position's document (target taken out) and cursor."""
    return builder.build(pos.prefix + pos.suffix, len(pos.prefix), settings)


def build_requests(engine, positions: list[Position], mode: str, max_new_tokens: int, healing: bool,
                   suffix_share: float) -> tuple[list[GenerationRequest], list[str]]:
    """One greedy one-line request per position, and the layout its prompt used."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    fim = {"off": False, "served": None}.get(mode, True)
    builder = PromptBuilder.for_engine(engine, SERVED_LAYOUT if mode in ("off", "served") else mode)
    settings = completion_settings(max_new_tokens, healing, suffix_share, fim)
    requests, layouts = [], []
    for pos in positions:
        prompt = position_prompt(builder, pos, settings)
        requests.append(GenerationRequest(prompt_ids=prompt.ids, max_new_tokens=max_new_tokens + prompt.n_healed,
                                          temperature=0.0, stop=("\n",), required_prefix=prompt.required_prefix))
        layouts.append(prompt.layout)
    return requests, layouts


def _key(req: GenerationRequest) -> tuple:
    return tuple(req.prompt_ids), req.required_prefix, req.max_new_tokens


def generate_all(decoder: Decoder, requests: list[GenerationRequest], batch_size: int, done: dict) -> float:
    """Generate every request not in `done` (key -> Generation), in place; returns seconds."""
    todo, seen = [], set()   # one request per distinct prompt not generated yet
    for i, r in enumerate(requests):
        if _key(r) not in done and _key(r) not in seen:
            seen.add(_key(r))
            todo.append(i)
    # Batches: similar lengths together (less padding). One at a time: file order, so the
    # decoder's KV prefix cache serves the part a prompt shares with the previous one.
    # Either way the order is a pure function of the prompts: results are reproducible.
    if batch_size > 1:
        todo.sort(key=lambda i: (len(requests[i].prompt_ids), i))
    start = time.monotonic()
    for b in range(0, len(todo), batch_size):
        chunk = todo[b:b + batch_size]
        if batch_size == 1:
            outs = decoder.generate(requests[chunk[0]])[:1]
        else:
            outs = decoder.generate_batch([requests[i] for i in chunk])
        for i, g in zip(chunk, outs):
            done[_key(requests[i])] = g
    return time.monotonic() - start


def _scores(samples: list[dict]) -> dict:
    n = len(samples)
    return {"positions": n,
            "exact_match": 100.0 * sum(s["exact_match"] for s in samples) / n if n else float("nan"),
            "edit_similarity": sum(s["edit_similarity"] for s in samples) / n if n else float("nan")}


def run_mode(decoder: Decoder, positions: list[Position], mode: str, max_new_tokens: int, batch_size: int,
             healing: bool, suffix_share: float, done: dict | None = None) -> tuple[dict, list[dict]]:
    """Generate and score every position in one mode (`MODES`); `done` holds generations of
    prompts already run (shared between modes: a prompt is generated once)."""
    done = {} if done is None else done
    requests, layouts = build_requests(decoder.engine, positions, mode, max_new_tokens, healing, suffix_share)
    seconds = generate_all(decoder, requests, batch_size, done)
    samples, reasons, prompt_tokens = [], Counter(), 0
    for pos, req, layout in zip(positions, requests, layouts):
        gen = done[_key(req)]
        prediction = gen.text[len(req.required_prefix):] if gen.text.startswith(req.required_prefix) else gen.text
        reasons[gen.finish_reason] += 1
        prompt_tokens += gen.prompt_tokens
        samples.append({"document": pos.document, "line": pos.line + 1, "target": pos.target,
                        "prediction": prediction, "exact_match": exact_match(prediction, pos.target),
                        "edit_similarity": edit_similarity(prediction, pos.target),
                        "finish_reason": gen.finish_reason, "layout": layout,
                        "suffix": suffix_kind(pos.prefix + pos.suffix, len(pos.prefix))})
    n = len(positions)
    by_suffix = {k: _scores([s for s in samples if s["suffix"] == k]) for k in SUFFIX_KINDS}
    summary = {
        **_scores(samples),
        "fim_share": 100.0 * sum(x != "l2r" for x in layouts) / n if n else 0.0,
        "mean_prompt_tokens": prompt_tokens / n if n else 0.0,
        "finish_reasons": dict(reasons),
        "by_suffix": {k: v for k, v in by_suffix.items() if v["positions"]},
        "seconds": seconds,
        "ms_per_position": 1e3 * seconds / n if n else 0.0,
    }
    return summary, samples


def evaluate_line_completion(engine, data: str, positions: int = 500, seed: int = 0, cursor: str = "indent",
                             fim: str = "both", layout: str = SERVED_LAYOUT, max_new_tokens: int = 48,
                             batch_size: int = 8, healing: bool = True, suffix_share: float = 0.25,
                             after_cursor: str = "file") -> dict:
    if fim not in ("both", "on", "off", "served"):
        raise ValueError(f"--fim must be both, on, off or served, got {fim!r}")
    if after_cursor not in AFTER_CURSOR:
        raise ValueError(f"--after-cursor must be one of {AFTER_CURSOR}, got {after_cursor!r}")
    stats = DataStats()
    picked = sample_positions(data, positions, seed, cursor, stats)
    if not picked:
        raise ValueError(f"no candidate lines in {data}")
    if after_cursor == "none":   # the same positions, each document ending at its cursor
        picked = [replace(p, suffix="") for p in picked]
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
    if fim in ("both", "served"):
        modes.append("served")
    results, samples, done = {}, {}, {}
    decoder = Decoder(engine)
    for mode in modes:
        name = mode_name(mode)
        results[name], samples[name] = run_mode(decoder, picked, mode, max_new_tokens, batch_size, healing,
                                                suffix_share, done)
    return {"results": results, "data": stats.as_dict(), "samples": samples, "notes": notes,
            "settings": {"positions": positions, "seed": seed, "cursor": cursor, "fim": fim, "layout": layout,
                         "served_layout": SERVED_LAYOUT, "fim_default": engine.info.fim_default,
                         "max_new_tokens": max_new_tokens, "batch_size": batch_size, "token_healing": healing,
                         "suffix_share": suffix_share, "after_cursor": after_cursor,
                         "min_target_chars": MIN_TARGET_CHARS}}
