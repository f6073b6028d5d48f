"""The bracket rule on held-out code: does every suggestion the server shows hold it, and does
the rule make suggestions worse?

The server's own pipeline (`Completer`: the prompt builder, token healing, the engine, the
post-processing) with the shipped default model, at seeded positions in held-out sources
(flask, itsdangerous, werkzeug: none is in any training set). At each position a line is cut
at a random column and the typed-ahead part removed, in two ways:

* `cut`:    the rest of the line is gone (the user is writing at its end);
* `closer`: the line's closing brackets and punctuation after the cut stay after the cursor,
            as an editor that auto-closes brackets leaves them (`f(a, |)` + `:`).

Each position is asked twice: automatically (greedy, one candidate) and invoked
(`numCandidates` sampled candidates, the default 3). Every suggestion is checked against the
whole document above the cursor (not only the rule's window): the suggestion plus the rest of
the line closes no bracket that is not open, and none the rest of the line closes. The same
positions then run with the rule switched off (the module's function replaced by the identity,
in this process only), to count what the rule changed and to compare exact match and edit
similarity with the removed text (automatic suggestions, greedy: the same generations). Only the
positions where the rule cut a candidate run again: elsewhere the results are the same.

    python bench/check_brackets.py --source /work/runs/heldout/src [--positions 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import codeparrot_ls.postprocess as PP  # noqa: E402
from codeparrot_ls.completion import Completer  # noqa: E402
from codeparrot_ls.engine import load_engine  # noqa: E402
from codeparrot_ls.postprocess import CursorContext  # noqa: E402
from codeparrot_ls.postprocess.brackets import bracket_excess  # noqa: E402
from codeparrot_ls.settings import CompletionSettings  # noqa: E402
from codeparrot_ls.status import default_model_dir  # noqa: E402
from trainer.evaluate.line_completion import edit_similarity, exact_match  # noqa: E402

_TAIL = re.compile(r"[)\]}:,;\s]*$")     # what an auto-closing editor leaves after the cursor


def positions(files: list[Path], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        path = rng.choice(files)
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        k = rng.randrange(len(lines))
        line = lines[k]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind = "closer" if len(out) % 2 else "cut"
        keep = _TAIL.search(line).start() if kind == "closer" else len(line)
        indent = len(line) - len(line.lstrip())
        if keep <= indent + 1:
            continue
        col = rng.randint(indent + 1, keep - 1) if keep - 1 > indent + 1 else indent + 1
        rest = line[keep:] if kind == "closer" else ""
        if kind == "closer" and not rest.strip():
            continue
        start = len("\n".join(lines[:k])) + (1 if k else 0)
        doc = text[:start] + line[:col] + rest + text[start + len(line):]
        out.append({"file": str(path), "line": k, "kind": kind, "doc": doc, "offset": start + col,
                    "target": line[col:keep]})
    return out


def holds_in_document(text: str, doc: str, offset: int) -> bool:
    """The rule's promise, judged with every line above the cursor (not only its window)."""
    start = doc.rfind("\n", 0, offset) + 1
    end = doc.find("\n", offset)
    end = len(doc) if end < 0 else end
    full = CursorContext(doc[start:offset], doc[offset:end], doc[:max(start - 1, 0)].split("\n") if start else [], [])
    cut, worse = bracket_excess(text, full)
    return cut is None and not worse


def run(completer: Completer, cases: list[dict], settings: CompletionSettings, indices) -> dict[int, dict]:
    rows = {}
    for i in indices:
        c, row = cases[i], {}
        for mode, invoked in (("auto", False), ("invoked", True)):
            fired.clear()
            out = completer.complete(f"file:///held-out/{i}.py", c["doc"], c["offset"], settings, invoked)
            row[mode] = [s.insert_text for s in out]
            row[mode + "_fired"] = bool(fired)
        rows[i] = row
    return rows


fired: list[int] = []
_rule = PP.balance_brackets


def recording_rule(text: str, ctx: CursorContext) -> str:
    """The rule, noting when it changes a candidate (only those positions run again without it)."""
    out = _rule(text, ctx)
    if out != text:
        fired.append(1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", action="append", required=True, help="folder of held-out .py files")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    ap.add_argument("--positions", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="write the per-position results as JSON here")
    args = ap.parse_args(argv)

    files = sorted(p for s in args.source for p in Path(s).rglob("*.py") if p.stat().st_size > 2000)
    cases = positions(files, args.positions, args.seed)
    engine = load_engine(args.model or default_model_dir(), threads=args.threads)
    settings = CompletionSettings(time_budget_ms=60_000)   # tokens, not a busy machine, end a suggestion
    t0 = time.perf_counter()
    PP.balance_brackets = recording_rule
    with_rule = run(Completer(engine), cases, settings, range(len(cases)))
    # Where the rule changed nothing, the suggestions without it are the same: run the rest again.
    again = [i for i, r in with_rule.items() if r["auto_fired"] or r["invoked_fired"]]
    PP.balance_brackets = lambda text, ctx: text
    try:
        without = {**with_rule, **run(Completer(engine), cases, settings, again)}
    finally:
        PP.balance_brackets = _rule

    shown = broken = raw_shown = raw_broken = changed = 0
    em = {"with": 0, "without": 0}
    es = {"with": 0.0, "without": 0.0}
    for i, c in enumerate(cases):
        a, b = with_rule[i], without[i]
        for text in a["auto"] + a["invoked"]:
            shown += 1
            broken += not holds_in_document(text, c["doc"], c["offset"])
        for text in b["auto"] + b["invoked"]:
            raw_shown += 1
            raw_broken += not holds_in_document(text, c["doc"], c["offset"])
        changed += a["auto"] != b["auto"]
        for name, row in (("with", a), ("without", b)):
            pred = row["auto"][0].split("\n", 1)[0] if row["auto"] else ""
            em[name] += exact_match(pred, c["target"])
            es[name] += edit_similarity(pred, c["target"])
    n = len(cases)
    summary = {
        "positions": n, "kinds": {k: sum(c["kind"] == k for c in cases) for k in ("cut", "closer")},
        "suggestions_with_rule": shown, "breaking_with_rule": broken,
        "suggestions_without_rule": raw_shown, "breaking_without_rule": raw_broken,
        "positions_where_the_rule_cut_a_candidate": len(again), "automatic_changed_by_rule": changed,
        "automatic_exact_match": {k: round(100 * v / n, 1) for k, v in em.items()},
        "automatic_edit_similarity": {k: round(v / n, 1) for k, v in es.items()},
        "seconds": round(time.perf_counter() - t0, 1), "model": str(args.model or default_model_dir()),
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "cases": [
            {k: c[k] for k in ("file", "line", "kind", "offset", "target")} | {"with": a, "without": b}
            for i, c in enumerate(cases) for a, b in [(with_rule[i], without[i])]]}, indent=1), encoding="utf-8")
    return 0 if broken == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
