"""Token healing's effect on line completion, through the server's completion pipeline.

The same model, the same held-out positions, the same greedy decoding; the only change
is `token_healing` in the completion settings (baseline: off). For each position the
document given to `Completer.complete` is the held-out file with the rest of the
cursor's line removed (the lines after it stay: the FIM suffix), and the prediction is
the first line of the suggestion the pipeline returns (post-processing included; no
suggestion counts as an empty prediction). Positions come from the evaluator's sampler
(trainer/evaluate/line_completion.py), so the scores are comparable with
`codeparrot evaluate line-completion`:

  indent   the cursor right after the line's indentation
  start    the same lines with the cursor at column 0 (the model writes the indentation)
  random   the cursor at a random character of the line (often inside an identifier)

Token healing is measured off (the baseline), "always" (every prompt backs up over its
last pre-token) and "boundary" (the server's default: only when code continuing at the
cursor would be pre-tokenized into that last piece, see codeparrot_ls/healing.py), for
both prompt layouts: FIM (SPM, the server's default) and left-to-right. Multi-line mode
(what the server does at the end of a line) unless --single-line. Scores: exact match
(whitespace-split tokens) and edit similarity (rapidfuzz ratio).

    python bench/bench_token_healing.py --model MODEL_DIR --data HELD_OUT [--positions 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codeparrot_ls.completion import Completer  # noqa: E402
from codeparrot_ls.engine import load_engine  # noqa: E402
from codeparrot_ls.settings import CompletionSettings  # noqa: E402
from trainer.evaluate.data import DataStats  # noqa: E402
from trainer.evaluate.line_completion import Position, edit_similarity, exact_match, sample_positions  # noqa: E402


def line_start_positions(positions):
    """The `indent` positions with the cursor moved back to column 0: the model must also
    write the line's indentation."""
    out = []
    for p in positions:
        start = p.prefix.rfind("\n") + 1
        out.append(Position(p.document, p.line, p.prefix[:start], p.prefix[start:] + p.target, p.suffix))
    return out


def run(completer: Completer, positions, settings: CompletionSettings) -> dict:
    em = es = empty = healed = 0
    t0 = time.perf_counter()
    for i, pos in enumerate(positions):
        text = pos.prefix + pos.suffix
        out = completer.complete(f"file:///held-out/{i}.py", text, len(pos.prefix), settings, invoked=False)
        healed += bool(completer.stats.last_healed)
        prediction = out[0].insert_text.split("\n", 1)[0].rstrip() if out else ""
        empty += not prediction
        em += exact_match(prediction, pos.target)
        es += edit_similarity(prediction, pos.target)
    n = max(len(positions), 1)
    return {"exact_match": 100 * em / n, "edit_similarity": es / n, "empty": empty, "healed": healed,
            "ms_per_position": 1e3 * (time.perf_counter() - t0) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (ONNX export or checkpoint)")
    ap.add_argument("--data", required=True, help="held-out data: valid-*.jsonl.gz shards or .py files")
    ap.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"])
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--single-line", action="store_true", help="single-line mode (default: multi-line)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not Path(args.model).is_dir():
        ap.error(f"--model {args.model}: not a folder")

    engine = load_engine(args.model, args.engine, threads=args.threads)
    print(f"model {args.model} ({engine.info.engine}, {engine.info.n_positions} positions, "
          f"FIM {'yes' if engine.info.supports_fim else 'no'})")
    results = []
    policies = {"off": None, "always": "always", "boundary": "boundary"}
    for cursor in ("indent", "start", "random"):
        stats = DataStats()
        positions = sample_positions(args.data, args.positions, args.seed,
                                     "indent" if cursor == "start" else cursor, stats)
        if cursor == "start":
            positions = line_start_positions(positions)
        for fim in ([True, False] if engine.info.supports_fim else [False]):
            row = {}
            for name, policy in policies.items():  # "off" first: the baseline
                settings = CompletionSettings(
                    max_new_tokens=args.max_new_tokens, context_tokens=args.context_tokens, fim=fim,
                    single_line=args.single_line, token_healing=policy is not None, min_chars=1,
                    time_budget_ms=60_000)
                row[name] = run(Completer(engine, healing_policy=policy or "boundary"), positions, settings)
            results.append({"cursor": cursor, "layout": "fim-spm" if fim else "left-to-right",
                            "positions": len(positions), **row})

    print(f"\nmode: {'single-line' if args.single_line else 'multi-line'}; EM = exact match %, "
          f"ES = edit similarity; ratio = ES / ES without healing; healed = positions healed")
    print(f"{'cursor':<7} {'layout':<14} {'n':>4} | {'EM off':>6} {'always':>6} {'bound.':>6} | "
          f"{'ES off':>6} {'always':>6} {'ratio':>5} {'bound.':>6} {'ratio':>5} | {'healed a/b':>10} | ms off/a/b")
    for r in results:
        off, alw, bnd = r["off"], r["always"], r["boundary"]
        base = off["edit_similarity"] or float("nan")
        print(f"{r['cursor']:<7} {r['layout']:<14} {r['positions']:>4} | {off['exact_match']:6.1f} "
              f"{alw['exact_match']:6.1f} {bnd['exact_match']:6.1f} | {off['edit_similarity']:6.1f} "
              f"{alw['edit_similarity']:6.1f} {alw['edit_similarity'] / base:5.2f} {bnd['edit_similarity']:6.1f} "
              f"{bnd['edit_similarity'] / base:5.2f} | {alw['healed']:>4}/{bnd['healed']:<5} | "
              f"{off['ms_per_position']:.0f}/{alw['ms_per_position']:.0f}/{bnd['ms_per_position']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
