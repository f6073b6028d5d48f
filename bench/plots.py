"""PNG plots for docs/benchmarks.md from the benchmarks' JSON results.

    python bench/plots.py --metrics runs/default/train/metrics.jsonl \
        --server bench/results/server.json --generate bench/results/generate.json --out docs/img

Each input is optional; each plot is made from what is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(metrics: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r and "tokens" in r]
    valid = [(r["tokens"], r["eval_loss"]) for r in rows if "eval_loss" in r and "tokens" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([t / 1e6 for t, _ in train], [v for _, v in train], lw=1, label="training loss")
    if valid:
        ax.plot([t / 1e6 for t, _ in valid], [v for _, v in valid], "o-", label="valid loss")
    ax.set_xlabel("tokens trained (millions)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"pretraining: {metrics.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out / "loss_vs_tokens.png")


def plot_latency(server: Path, out: Path) -> Path:
    data = json.loads(server.read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("LSP inline completion (ONNX int8)", data["latency_ms"]),
              ("transformers generate, same prompts", data["generate_ms"])]
    if data.get("typing_ms"):
        series.append(("typing along a shown suggestion (cache)", data["typing_ms"]))
    top = max(max(v) for _, v in series)
    bins = [x * top / 60 for x in range(61)]
    for label, values in series:
        ax.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"inline completion latency, model: {Path(data.get('model', '?')).name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "inline_latency.png")


def plot_generate(generate: Path, out: Path) -> Path:
    results = json.loads(generate.read_text())["results"]
    lengths = sorted(results, key=int)
    engines = list(results[lengths[0]])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(engines)
    for k, name in enumerate(engines):
        xs = [i + k * width for i in range(len(lengths))]
        ax.bar(xs, [results[n][name]["total_ms"] for n in lengths], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(lengths))], [f"{n} prompt tokens" for n in lengths])
    ax.set_ylabel("ms for the prompt + 32 new tokens")
    ax.set_title("ONNX Runtime engines vs transformers generate")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "onnx_vs_generate.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, help="a pretraining run's metrics.jsonl")
    ap.add_argument("--server", type=Path, help="bench_server.py --json output")
    ap.add_argument("--generate", type=Path, help="bench_generate.py --json output")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    made = []
    if args.metrics:
        made.append(plot_loss(args.metrics, args.out))
    if args.server:
        made.append(plot_latency(args.server, args.out))
    if args.generate:
        made.append(plot_generate(args.generate, args.out))
    if not made:
        ap.error("nothing to plot: give --metrics, --server and/or --generate")
    for path in made:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
