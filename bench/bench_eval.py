"""Evaluation speed: line completion batched vs one prompt at a time, and the
HumanEval sandbox vs a bare subprocess.

Line completion (the same positions, greedy, on the same model, in one run):
  batch 1      one prompt at a time through `Engine.generate` (the server's path, with
               its KV prefix reuse between consecutive prompts of a file): the baseline
  batch B      B prompts per left-padded batch through `Decoder.generate_batch`
for the torch engine (checkpoint) and the ONNX engine (fp32 export). Reported: ms per
position and speed-up over batch 1 of the same engine; and whether the predictions
are equal to batch 1's (a batch decodes its rows together, which may change the last float
bits, so a few may differ).

Sandbox: HumanEval's reference solutions (prompt + solution + test + check), per program:
`python -I -c` in a plain subprocess (the floor: one interpreter start), the whole program
in the sandbox (`trainer.sandbox.run_python`), and the verdict path of an evaluation
(`trainer.evaluate.humaneval.check_completion`: the solution in the sandbox, the test in a
checker process), with 1 and 2 workers; wall ms per program and CPU ms per program
(this process and its children), which a loaded machine disturbs less.

The model is a randomly initialised "tiny" preset (4 layers x 256, 512 positions)
with a BPE trained on the standard library, so it rarely writes a newline: most
positions decode all `--max-new-tokens`, the worst case for a trained model.

    python bench/bench_eval.py [--positions 64] [--max-new-tokens 24] [--batches 4 8 16]
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

print = functools.partial(print, flush=True)  # noqa: A001 - progress shows when piped to a file
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codeparrot_ls.modelfiles import TOKENIZER_FILE  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN = ["argparse.py", "textwrap.py", "json/encoder.py", "shlex.py", "string.py", "dataclasses.py", "heapq.py"]
HELD_OUT = ["bisect.py", "fnmatch.py", "glob.py", "colorsys.py", "keyword.py", "queue.py", "sched.py"]


def build_model(folder: Path) -> tuple[Path, Path]:
    import torch
    from tokenizers import Tokenizer

    from trainer.export import main as export_main
    from trainer.model import build_model as build
    from trainer.tokenizer import save_tokenizer, train_tokenizer

    ckpt, onnx = folder / "ckpt", folder / "onnx"
    tok = train_tokenizer([(STDLIB / m).read_text() for m in TRAIN], vocab_size=4096)
    save_tokenizer(tok, ckpt)
    torch.manual_seed(0)
    build("tiny", Tokenizer.from_file(str(ckpt / TOKENIZER_FILE))).save_pretrained(ckpt)
    if export_main(["--checkpoint", str(ckpt), "--output", str(onnx)]) != 0:
        raise SystemExit("export failed")
    return ckpt, onnx


def bench_line_completion(model: Path, engine_kind: str, data: Path, args) -> None:
    from trainer.evaluate.common import open_engine
    from trainer.evaluate.data import DataStats
    from trainer.evaluate.line_completion import run_mode, sample_positions

    from codeparrot_ls.engine import Decoder

    engine = open_engine(model, engine_kind, "fp32", threads=args.threads)
    decoder = Decoder(engine)
    positions = sample_positions(str(data), args.positions, 0, "indent", DataStats())
    base_ms, base_pred = None, None
    for batch in [1, *args.batches]:
        best, preds = None, None
        for _ in range(args.repeats):
            decoder.reset()  # every repeat starts cold
            summary, samples = run_mode(decoder, positions, "off", args.max_new_tokens, batch, True, 0.25)
            best = summary["ms_per_position"] if best is None else min(best, summary["ms_per_position"])
            preds = [s["prediction"] for s in samples]
        if base_ms is None:
            base_ms, base_pred = best, preds
        same = sum(a == b for a, b in zip(preds, base_pred))
        print(f"  {engine_kind:<5} batch {batch:>2}: {best:7.1f} ms/position   x{base_ms / best:4.2f} vs batch 1   "
              f"predictions equal to batch 1: {same}/{len(preds)}")
    engine.close()


def _load_module(path: str):
    """Another version of the sandbox module, to compare: `git show REV:trainer/sandbox/__init__.py > old.py`
    (`REV:trainer/sandbox.py` for a revision before the trainer's stages were packages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = module
    spec.loader.exec_module(module)
    return module


def bench_sandbox(n: int, old_path: str | None = None) -> None:
    import resource

    from trainer.evaluate.humaneval import check_completion, load_problems
    from trainer.sandbox import isolation, run_python

    problems = load_problems()[:n]
    full = {p["task_id"]: p["prompt"] + p["canonical_solution"] + "\n\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
            for p in problems}

    def bare(p):
        subprocess.run([sys.executable, "-I", "-c", full[p["task_id"]]], check=True, capture_output=True)

    def boxed(p):
        assert run_python(full[p["task_id"]]).status == "ok"

    def checked(p):
        assert check_completion(p, p["canonical_solution"]).passed

    paths = [("bare subprocess", bare), ("run_python", boxed), ("check_completion", checked)]
    if old_path:
        old = _load_module(old_path)
        paths.insert(1, ("old run_python", lambda p: old.run_python(full[p["task_id"]]).passed or 1 / 0))

    def cpu() -> float:
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    print(f"  isolation: {isolation().describe()['mode']}; {len(problems)} HumanEval reference solutions")
    for workers in (1, 2):
        row = []
        for name, fn in paths:
            t, c = time.perf_counter(), cpu()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fn, problems))
            row.append(f"{name} {(time.perf_counter() - t) / n * 1000:6.1f} ms ({(cpu() - c) / n * 1000:5.1f} ms CPU)")
        print(f"  {workers} worker(s): " + ", ".join(row) + " per program")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--programs", type=int, default=40, help="HumanEval problems for the sandbox benchmark")
    ap.add_argument("--sandbox-only", action="store_true", help="only the sandbox benchmark")
    ap.add_argument("--old-sandbox", help="another version of the sandbox module (trainer/sandbox/__init__.py) to time on the same programs")
    args = ap.parse_args()
    if args.sandbox_only:
        print(f"sandbox: {args.programs} programs")
        bench_sandbox(args.programs, args.old_sandbox)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "data"
        data.mkdir()
        for m in HELD_OUT:
            (data / m.replace("/", "_")).write_text((STDLIB / m).read_text())
        ckpt, onnx = build_model(folder)
        print(f"line completion: {args.positions} positions, greedy, max {args.max_new_tokens} new tokens, "
              f"left-to-right, tiny random model, {args.threads} threads")
        bench_line_completion(ckpt, "torch", data, args)
        bench_line_completion(onnx, "onnx", data, args)
    print(f"sandbox: {args.programs} programs")
    bench_sandbox(args.programs, args.old_sandbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
