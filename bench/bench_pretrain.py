"""Training throughput: `codeparrot pretrain` vs a plain PyTorch loop, same model, data and batch.

Reference: the textbook loop: fp32 `GPT2LMHeadModel` (the "tiny" preset), `torch.optim.AdamW`
with default settings, batches already in memory, torch's default threads.
Candidate: `trainer.pretrain.main` itself with its defaults (Accelerate, bf16 autocast, fused
AdamW, the output layer + cross-entropy computed block by block (`--loss-chunk-size`), packing
in a DataLoader worker, thread setting), timed from its own metrics.jsonl windows, which
include waiting for data but exclude evaluation and checkpoint saves.

Both run in this process, alternately, `--rounds` times each; the best tokens/s of each side
is compared (the machine is shared; slow outliers are other people's work). MFU is
6N-style model FLOPs per token (trainer.model.training_flops_per_token) x tokens/s over the
peak: the bf16 (candidate) or fp32 (reference) matmul throughput measured in this run with
2048^2 matmuls, so it reads "share of what this machine's matmul kernel reaches".

Data: corpus shards from `--corpus DIR`, else `codeparrot corpus` over the standard library
(or, failing that, the stdlib files written as shards directly); a vocab-8192 tokenizer is
trained on the train split.

    python bench/bench_pretrain.py [--steps 20] [--rounds 2] [--batch-size 8] [--seq-length 512]
    python bench/bench_pretrain.py --device cuda --mixed-precision bf16   # on a GPU machine
    python bench/bench_pretrain.py --curve-minutes 10 --curve-png docs/img/pretrain_loss_tiny.png
    python bench/bench_pretrain.py --step-variants --steps 3 --rounds 4   # where the speed-up comes from
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from codeparrot_ls.modelfiles import TOKENIZER_FILE  # noqa: E402


def build_corpus(folder: Path) -> Path:
    try:
        from trainer.corpus import main as corpus_main

        if corpus_main(["--output", str(folder), "--no_progress", "--valid_fraction", "0.05"]) == 0:
            return folder
    except Exception as exc:  # the corpus stage is optional for this benchmark
        print(f"codeparrot corpus failed ({exc}); writing stdlib shards directly", file=sys.stderr)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    records = [{"content": p.read_text(encoding="utf-8", errors="replace"), "quality": 0.5} for p in files]
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", records[20:]), ("valid", records[:20])):
        with gzip.open(folder / f"{split}-00000.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in part)
    return folder


def build_tokenizer(corpus: Path, folder: Path) -> Path:
    from trainer.pretraining.data import read_documents, shard_files, StreamStats
    from trainer.tokenizer import save_tokenizer, train_tokenizer

    docs = (r["content"] for r in read_documents(shard_files(corpus, "train"), StreamStats()))
    save_tokenizer(train_tokenizer(docs, vocab_size=8192), folder)
    return folder


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, seconds: float = 2.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def reference_run(args, corpus: Path, tokenizer: Path, device: str, textbook: bool) -> tuple[float, float]:
    """Plain loop, fp32, default AdamW; (tokens/s, tokens per CPU-second) over the timed steps.

    textbook=True: GPT2Config's defaults at the preset's shape (dropout 0.1, gelu_new), the
    model a plain script builds; False: the preset's exact config (no dropout, gelu tanh).
    """
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.pretraining.data import PackedDataset, shard_files
    from trainer.model import PRESETS, build_model

    torch.manual_seed(0)
    model = build_model(args.model_size, Tokenizer.from_file(str(tokenizer / TOKENIZER_FILE)))
    if textbook:
        c = model.config
        model = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, bos_token_id=c.bos_token_id,
                                           eos_token_id=c.eos_token_id, **PRESETS[args.model_size]))
    model = model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    data = PackedDataset(shard_files(corpus, "train"), tokenizer / TOKENIZER_FILE, args.seq_length,
                         args.batch_size, infinite=True, fim_rate=0.5)
    batches = [b for _, b in zip(range(args.steps + args.warmup), data)]
    start = cpu_start = None
    for i, batch in enumerate(batches):
        if i == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
        batch = batch.to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    loss.item()
    tokens = args.steps * args.batch_size * args.seq_length
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu_start)


def candidate_args(args, corpus: Path, tokenizer: Path, output: Path, steps: int, extra=()) -> list[str]:
    return ["--corpus", str(corpus), "--tokenizer", str(tokenizer), "--output", str(output),
            "--model-size", args.model_size, "--seq-length", str(args.seq_length),
            "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--warmup-steps", "10",
            "--mixed-precision", args.mixed_precision, "--report-to", "none", "--save-steps", "100000",
            "--dataloader-workers", str(args.workers), *extra]


def candidate_run(args, corpus: Path, tokenizer: Path, output: Path) -> tuple[float, float]:
    from trainer.pretrain import main as pretrain_main

    # Windows of `warmup` steps: the first (start-up, worker spawn) is not timed.
    window = args.warmup
    windows = max(1, -(-args.steps // window))
    rc = pretrain_main(candidate_args(args, corpus, tokenizer, output, window * (windows + 1),
                                      ["--eval-steps", "0", "--logging-steps", str(window)]))
    assert rc == 0, f"pretrain exited {rc}"
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_s" in r and r["step"] > window]
    # equal-token windows: the harmonic mean is total tokens over total time
    return tuple(len(timed) / sum(1 / r[k] for r in timed) for k in ("tokens_per_s", "tokens_per_cpu_s"))


def loss_curve(args, corpus: Path, tokenizer: Path, output: Path) -> None:
    """A `--curve-minutes` tiny run (evaluating every 100 steps) and its loss-vs-tokens PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.pretrain import main as pretrain_main

    steps = 100000
    rc = pretrain_main(candidate_args(args, corpus, tokenizer, output, steps, [
        "--max-minutes", str(args.curve_minutes), "--eval-steps", "100", "--eval-batches", "10",
        "--logging-steps", "10", "--warmup-steps", "100", "--learning-rate", "1e-3", "--save-steps", "500"]))
    assert rc == 0
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train = [(r["tokens"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["tokens"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss (10-step mean)", lw=1)
    ax.plot(*zip(*evals), "o-", label="valid loss", ms=3)
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"tiny GPT-2 on the stdlib, {args.curve_minutes:g} min, {args.mixed_precision}")
    ax.grid(alpha=0.3)
    ax.legend()
    Path(args.curve_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.curve_png, dpi=120, bbox_inches="tight")
    last = evals[-1]
    print(f"curve: {train[-1][0]:,} tokens, final valid loss {last[1]:.3f} "
          f"(perplexity {2.718281828 ** last[1]:.1f}); plot in {args.curve_png}")


def step_variants(args, corpus: Path, tokenizer: Path) -> None:
    """Step-level A/B of what the candidate's step is made of: same model, batches and rounds.

    Each variant runs the whole training step (forward, loss, backward, clipping, AdamW) on
    the same in-memory batches; the variants alternate, `--rounds` times, best of each kept.
    """
    import os

    from tokenizers import Tokenizer

    from trainer.pretraining.data import PackedDataset, shard_files
    from trainer.model import LanguageModelLoss, build_model
    from trainer.pretraining.setup import parameter_groups

    device = args.device
    data = PackedDataset(shard_files(corpus, "train"), tokenizer / TOKENIZER_FILE, args.seq_length,
                         args.batch_size, infinite=True, fim_rate=0.5)
    batches = [b.to(device) for _, b in zip(range(args.steps), data)]
    variants = {  # name: (autocast, --loss-chunk-size, fused AdamW, torch.compile)
        "fp32, transformers' loss, torch AdamW (the preset loop)": (False, 0, False, False),
        f"{args.mixed_precision}, transformers' loss, fused AdamW": (True, 0, True, False),
        f"{args.mixed_precision}, chunked loss (256), fused AdamW: the default": (True, 256, True, False),
        f"{args.mixed_precision}, chunked loss (256), fused AdamW, --torch-compile": (True, 256, True, True),
    }
    low = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    steps = {}
    for name, (autocast, chunk, fused, compiled) in variants.items():
        torch.manual_seed(0)
        lm = build_model(args.model_size, Tokenizer.from_file(str(tokenizer / TOKENIZER_FILE))).to(device)
        lm.train()
        if compiled:
            lm.transformer.compile()
        optimizer = torch.optim.AdamW(parameter_groups(lm, 0.1), lr=5e-4, fused=fused or None)

        def step(batch, model=LanguageModelLoss(lm, chunk), optimizer=optimizer, autocast=autocast):
            with torch.autocast(device, dtype=low, enabled=autocast):
                loss = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        start, cpu = time.perf_counter(), time.process_time()
        step(batches[0]), step(batches[0])
        sync()
        print(f"{name}: first two steps (compilation included) {time.perf_counter() - start:.1f} s, "
              f"{time.process_time() - cpu:.1f} CPU-s", flush=True)
        steps[name] = step
    results = {name: [] for name in variants}
    tokens = len(batches) * batches[0].numel()
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                step(batch)
            sync()
            results[name].append((tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)))
    print(f"\nload average {os.getloadavg()[0]:.1f}; batch {args.batch_size}x{args.seq_length}, "
          f"{args.steps} steps x {args.rounds} rounds, best round of each")
    print("\n| step variant | tokens/s | vs fp32 | tokens/CPU-s | vs fp32 |\n|---|---:|---:|---:|---:|")
    base = [max(r[i] for r in results[next(iter(variants))]) for i in (0, 1)]
    for name, rows in results.items():
        wall, cpu = (max(r[i] for r in rows) for i in (0, 1))
        print(f"| {name} | {wall:,.0f} | {wall / base[0]:.2f}x | {cpu:,.0f} | {cpu / base[1]:.2f}x |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, help="corpus shards (default: build from the stdlib)")
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (also the timing window)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="candidate DataLoader workers")
    p.add_argument("--mixed-precision", default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--curve-minutes", type=float, default=0, help="also make the loss curve (minutes)")
    p.add_argument("--curve-png", default="docs/img/pretrain_loss_tiny.png")
    p.add_argument("--step-variants", action="store_true",
                   help="instead: step-level A/B of fp32, bf16, chunked loss and torch.compile")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = args.corpus or build_corpus(tmp / "corpus")
        tokenizer = build_tokenizer(corpus, tmp / "tokenizer")
        if args.step_variants:
            step_variants(args, corpus, tokenizer)
            return 0
        if args.curve_minutes:
            loss_curve(args, corpus, tokenizer, tmp / "curve")
            return 0
        sides = {"textbook": [], "preset": [], "candidate": []}
        for r in range(args.rounds):
            sides["textbook"].append(reference_run(args, corpus, tokenizer, args.device, textbook=True))
            sides["preset"].append(reference_run(args, corpus, tokenizer, args.device, textbook=False))
            sides["candidate"].append(candidate_run(args, corpus, tokenizer, tmp / f"run{r}"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:,.0f} tokens/s ({v[-1][1]:,.0f}/CPU-s)"
                                                 for k, v in sides.items()), flush=True)
        from tokenizers import Tokenizer

        from trainer.model import build_model, parameter_counts, training_flops_per_token

        model = build_model(args.model_size, Tokenizer.from_file(str(tokenizer / TOKENIZER_FILE)))
        flops = training_flops_per_token(model.config, args.seq_length)
        peak32 = matmul_peak(torch.float32, args.device)
        low = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16
        peak16 = matmul_peak(low, args.device) if args.mixed_precision != "no" else peak32
        best = {k: (max(w for w, _ in v), max(c for _, c in v)) for k, v in sides.items()}
        print(f"\nmodel {args.model_size}: {parameter_counts(model)['total'] / 1e6:.2f} M parameters, "
              f"{flops / 1e6:.1f} MFLOP per token (training); batch {args.batch_size}x{args.seq_length}; "
              f"device {args.device}, {torch.get_num_threads()} threads")
        print(f"matmul peak measured now: fp32 {peak32 / 1e12:.3f} TFLOP/s, "
              f"{args.mixed_precision} {peak16 / 1e12:.3f} TFLOP/s")
        print(f"\n| loop | tokens/s (best of {args.rounds}) | vs textbook | tokens/CPU-s | vs textbook "
              "| TFLOP/s | MFU |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = (("textbook fp32 loop: GPT2Config defaults (dropout 0.1, gelu_new), torch AdamW", "textbook", peak32),
                ("same loop, fp32, the preset's config (no dropout, gelu tanh)", "preset", peak32),
                (f"`codeparrot pretrain` ({args.mixed_precision}, chunked loss, fused AdamW, data worker)", "candidate",
                 peak16))
        for name, key, peak in rows:
            wall, cpu = best[key]
            print(f"| {name} | {wall:,.0f} | {wall / best['textbook'][0]:.2f}x | {cpu:,.0f} | "
                  f"{cpu / best['textbook'][1]:.2f}x | {wall * flops / 1e12:.3f} | {100 * wall * flops / peak:.1f} % |")
        print()
        for i, unit in ((0, "wall"), (1, "per CPU-second")):
            print(f"speed-up of codeparrot pretrain, {unit}: "
                  f"{best['candidate'][i] / best['textbook'][i]:.2f}x vs the textbook loop, "
                  f"{best['candidate'][i] / best['preset'][i]:.2f}x vs the same config in fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
