"""Early stop: tokens decoded per automatic inline completion with and without it.

The server's `Completer` stops decoding a multi-line suggestion as soon as post-processing
is certain to cut it where it is (a line left the cursor's block, or repeats the line after
the cursor); without early stop the engine decodes up to maxNewTokens (48) and
post-processing throws the rest away. Measured here, in one run, at the same positions:

1. tokens decoded per completion and the completion's time, early stop on vs off (two
   `Completer`s on two engines loaded from the same folder, interleaved position by
   position, each request cold: no KV reuse from the previous position), and that both
   show exactly the same suggestions;
2. a bound no exact rule can beat: the fewest tokens of the "off" generation whose text
   already post-processes to the suggestion shown (what a rule that knew the future would
   decode); the gap to it is mostly repetition loops, which post-processing cuts at the end
   of the text, so no rule can cut them before the end without changing some suggestions;
3. the decode loop's own overhead: every generation of the "off" run is replayed token by
   token through the loop's bookkeeping (`Row.push`), without and with the real early-stop
   predicate (made never to stop, so both see every token), against the engine's time per
   decode step.

Model: the shipped default model (trained, so block lengths are realistic; 512 positions).
Positions: like bench/bench_server.py (a cursor line cut at a random column, at least 4,000
characters above it; automatic trigger, greedy, maxNewTokens 48), in the default model's
held-out sources (werkzeug, flask, itsdangerous as installed here; none was trained on).

    python bench/bench_early_stop.py [--positions 100] [--model DIR] [--source DIR ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeparrot_ls.completion import Completer, cut_at_stops, stops_for  # noqa: E402
from codeparrot_ls.positions import locate  # noqa: E402
from codeparrot_ls.engine import load_engine  # noqa: E402
from codeparrot_ls.engine.base import GenerationRequest  # noqa: E402
from codeparrot_ls.engine.rows import Row, decode_utf8  # noqa: E402
from codeparrot_ls.postprocess import CursorContext, postprocess  # noqa: E402
from codeparrot_ls.settings import CompletionSettings  # noqa: E402
from codeparrot_ls.status import DEFAULT_MODEL_DIR  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import sample_positions  # noqa: E402  (the same cursors as the server benchmark)

HELD_OUT_PACKAGES = ("werkzeug", "flask", "itsdangerous")
SETTINGS = CompletionSettings(max_new_tokens=48, context_tokens=1024, time_budget_ms=60_000)


def held_out_dirs() -> list[Path]:
    """The installed held-out packages' folders, found without importing them."""
    out = []
    for name in HELD_OUT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out += [Path(p) for p in spec.submodule_search_locations]
    return out


class Recorder:
    """Keeps the requests and generations of a decoder (to replay them through the loop)."""

    def __init__(self, decoder):
        self.decoder, self.calls = decoder, []
        self._generate = decoder.generate
        decoder.generate = self.generate

    def generate(self, request: GenerationRequest):
        gens = self._generate(request)
        self.calls.append((request, gens))
        return gens


def oracle_tokens(decoder, position, request: GenerationRequest, token_ids: list[int], shown: str | None) -> int:
    """Fewest of `token_ids` whose text post-processes (as the Completer does) to `shown`."""
    text, line, col = position
    cursor = CursorContext.from_document(text, locate(text, line, col).offset)
    required = request.required_prefix
    _, later = stops_for(required, request.stop)
    pieces, raw = decoder.table.pieces, b""
    for k, tok in enumerate(token_ids, 1):
        raw += pieces[tok]
        generated = decode_utf8(raw)
        if generated.startswith(required):
            body = cut_at_stops(generated[len(required):], later)[0]
            if postprocess(body, cursor, single_line=cursor.mid_line, min_chars=SETTINGS.min_chars) == shown:
                return k
    return len(token_ids)


def pct(values, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def replay_push_us(decoder, replays, with_predicate: bool, repeats: int = 5) -> tuple[float, int, int]:
    """Mean microseconds of `Row.push` per token over `replays` ((request of the early-stop
    run, token ids decoded without early stop)), best of `repeats`; predicate calls; tokens.
    With the predicate: the request's real one, made never to stop."""
    table, info = decoder.table, decoder.info
    best, asked, tokens = float("inf"), 0, 0
    for _ in range(repeats):
        asked = tokens = 0
        spent = 0.0
        for request, ids in replays:
            real = request.stop_when

            def never(text, real=real):
                nonlocal asked
                asked += 1
                real(text)
                return None

            req = GenerationRequest(request.prompt_ids, request.max_new_tokens, stop=request.stop,
                                    required_prefix=request.required_prefix,
                                    stop_when=never if with_predicate else None)
            stops = [s.encode("utf-8") for s in req.stop if s]
            row = Row(req, len(request.prompt_ids))
            t0 = time.perf_counter()
            for tok in ids:
                row.push(tok, table, info.eos_id, info.n_positions, stops)
            spent += time.perf_counter() - t0
            tokens += len(ids)
        best = min(best, spent)
    return best / max(tokens, 1) * 1e6, asked, tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=100)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--source", type=Path, nargs="*", default=None,
                    help="folders / files of held-out Python (default: the default model's held-out packages)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sources = held_out_dirs() if args.source is None else args.source
    files = sorted(f for s in sources for f in ([s] if s.is_file() else s.rglob("*.py")))
    files = [f for f in files if f.stat().st_size > 8_000]
    if not files:
        print("no held-out Python files found: pass --source DIR", file=sys.stderr)
        return 2
    if not args.model.is_dir():
        print(f"model folder {args.model} does not exist", file=sys.stderr)
        return 2

    positions = sample_positions(args.positions, args.seed, files)
    eng_on, eng_off = load_engine(args.model, threads=args.threads), load_engine(args.model, threads=args.threads)
    on, off = Completer(eng_on), Completer(eng_off, early_stop=False)
    rec_off, rec_on = Recorder(off.decoder), Recorder(on.decoder)
    rows, mismatches = [], 0
    for i, (text, line, col) in enumerate(positions):
        uri = f"file:///held-out/{i}.py"
        row = {}
        for name, c in (("on", on), ("off", off)) if i % 2 else (("off", off), ("on", on)):
            c.decoder.reset()  # cold: the same work for both
            t0 = time.perf_counter()
            out = c.complete(uri, text, locate(text, line, col).offset, SETTINGS, invoked=False)
            row[name + "_ms"] = (time.perf_counter() - t0) * 1e3
            row[name + "_tokens"] = c.stats.last_generated_tokens
            row[name + "_text"] = out[0].insert_text if out else None
        mismatches += row["on_text"] != row["off_text"]
        rows.append(row)

    tok_on = [r["on_tokens"] for r in rows]
    tok_off = [r["off_tokens"] for r in rows]
    ms_on = [r["on_ms"] for r in rows]
    ms_off = [r["off_ms"] for r in rows]
    stopped = sum(a < b for a, b in zip(tok_on, tok_off))
    tok_oracle = [oracle_tokens(off.decoder, pos, req, gens[0].token_ids, r["off_text"])
                  for pos, (req, gens), r in zip(positions, rec_off.calls, rows)]
    shown = sum(r["on_text"] is not None for r in rows)
    step_ms = statistics.median(g[0].decode_ms / len(g[0].token_ids) for _, g in rec_off.calls if g[0].token_ids)
    assert len(rec_on.calls) == len(rec_off.calls) == len(rows)  # one model run per position
    # Multi-line requests (one-line ones get no predicate: their "\n" stop ends them).
    replays = [(r_on, g_off[0].token_ids) for (r_on, _), (_, g_off) in zip(rec_on.calls, rec_off.calls)
               if r_on.stop_when is not None]
    push_plain, _, n_tok = replay_push_us(off.decoder, replays, False)
    push_pred, asked, _ = replay_push_us(off.decoder, replays, True)

    print(f"model {args.model} ({eng_on.info.engine}, {args.threads} threads), {len(positions)} positions in "
          f"{len(files)} held-out files, automatic trigger, maxNewTokens {SETTINGS.max_new_tokens}")
    print(f"suggestions shown {shown}/{len(rows)}; identical with and without early stop: "
          f"{len(rows) - mismatches}/{len(rows)}")
    print(f"{'':34}{'early stop':>12}{'without':>12}{'ratio':>8}")
    print(f"{'tokens / completion, mean':34}{statistics.mean(tok_on):12.1f}{statistics.mean(tok_off):12.1f}"
          f"{statistics.mean(tok_on) / statistics.mean(tok_off):8.2f}")
    print(f"{'tokens / completion, median':34}{statistics.median(tok_on):12.1f}{statistics.median(tok_off):12.1f}")
    print(f"{'bound: tokens the suggestion needs':34}{statistics.mean(tok_oracle):12.1f}{'':12}"
          f"{statistics.mean(tok_oracle) / statistics.mean(tok_off):8.2f}  (mean)")
    print(f"{'completion ms, p50':34}{pct(ms_on, .5):12.1f}{pct(ms_off, .5):12.1f}{pct(ms_on, .5) / pct(ms_off, .5):8.2f}")
    print(f"{'completion ms, p95':34}{pct(ms_on, .95):12.1f}{pct(ms_off, .95):12.1f}{pct(ms_on, .95) / pct(ms_off, .95):8.2f}")
    print(f"completions stopped early: {stopped}/{len(rows)}; one-line requests (no predicate, the "
          f"'\\n' stop ends them): {len(rows) - len(replays)}")
    early = [r for r in rows if r["on_tokens"] < r["off_tokens"]]
    if early:
        print(f"  those {len(early)}: tokens {statistics.mean(r['on_tokens'] for r in early):.1f} vs "
              f"{statistics.mean(r['off_tokens'] for r in early):.1f} (mean), completion ms "
              f"{statistics.median(r['on_ms'] for r in early):.1f} vs {statistics.median(r['off_ms'] for r in early):.1f} (p50)")
    print(f"decode loop bookkeeping per token (the {len(replays)} multi-line requests' {n_tok} tokens without "
          f"early stop, replayed): {push_plain:.2f} us without the predicate, {push_pred:.2f} us with it "
          f"({asked} predicate calls, {asked / max(n_tok, 1):.2f} per token)")
    print(f"overhead {push_pred - push_plain:+.2f} us per token = "
          f"{(push_pred - push_plain) / 1e3 / step_ms * 100:.2f} % of a decode step ({step_ms:.2f} ms median)")
    if args.json:
        for r, k in zip(rows, tok_oracle):
            r["bound_tokens"] = k
        args.json.write_text(json.dumps({"rows": rows, "step_ms": step_ms, "push_us": [push_plain, push_pred],
                                         "predicate_calls": asked, "tokens": n_tok}, indent=1))
    eng_on.close()
    eng_off.close()
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
