"""`codeparrot evaluate --model DIR --task TASK`: perplexity, line completion, HumanEval.

The model folder is a Hugging Face checkpoint (PyTorch) or a `codeparrot export`
folder (ONNX); either way it is run by the same engine the language server uses,
so the ONNX model is measured exactly as it is served, and every generation prompt
comes from the server's prompt builder (codeparrot_ls.prompt_builder). Results are printed as a
table and, with `--output FILE`, written as JSON together with the model, the
engine, every setting and the timings.

    codeparrot evaluate --model runs/tiny --task perplexity --data corpus/valid-00000.jsonl.gz
    codeparrot evaluate --model export/ --task line-completion --data heldout/ --positions 1000
    codeparrot evaluate --model export/ --task repo-completion --data heldout/flask --positions 200
    codeparrot evaluate --model export/ --task humaneval --num-samples 20 --temperatures 0.2 0.8
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeparrot_ls.modelfiles import ENGINES
from trainer.evaluate.common import ModelFolderError, open_engine

TASKS = ("perplexity", "line-completion", "repo-completion", "humaneval")


@dataclass
class EvaluateArgs:
    model: str = field(metadata={"help": "checkpoint folder (torch) or exported ONNX folder"})
    task: str = field(metadata={"help": "what to measure", "choices": list(TASKS)})
    data: str | None = field(default=None, metadata={
        "help": "perplexity / line-completion: a folder of .py files or corpus shards (*.jsonl.gz), or one file; "
                "repo-completion: one repository folder"})
    output: str | None = field(default=None, metadata={"help": "write the results as JSON to this file"})
    engine: str = field(default="auto", metadata={"help": "auto: ONNX when the folder has it, else torch",
                                                  "choices": list(ENGINES)})
    precision: str = field(default="auto", metadata={"help": "ONNX: int8 when the folder has it (auto), or int8 / fp32",
                                                     "choices": ["auto", "int8", "fp32"]})
    threads: int | None = field(default=None, metadata={"help": "intra-op threads of the engine"})
    limit: int | None = field(default=None, metadata={
        "help": "quick run: at most N files (perplexity), positions (line-completion) or problems (humaneval)"})
    seed: int = field(default=0, metadata={"help": "positions (line-completion) and sampling (humaneval)"})
    # perplexity
    context: int | None = field(default=None, metadata={"help": "perplexity window (default: the model's n_positions)"})
    stride: int | None = field(default=None, metadata={
        "help": "perplexity: new tokens scored per window after the first (default: context / 2)"})
    # line completion
    positions: int = field(default=500, metadata={
        "help": "line-completion: number of sampled positions; repo-completion: per group (cross-file, first use, ordinary)"})
    cursor: str = field(default="indent", metadata={
        "help": "line-completion: cursor after the indentation (whole line) or at a random point in the line; "
                "repo-completion also: api (right before the name a cross-file line uses from another module)",
        "choices": ["indent", "random", "api"]})
    fim: str = field(default="both", metadata={
        "help": "line-completion: left-to-right (off), FIM (on), the server's per-request choice (served), "
                "or all three (both)", "choices": ["both", "on", "off", "served"]})
    fim_layout: str = field(default="spm", metadata={"help": "FIM layout of --fim on (the server's: spm)",
                                                     "choices": ["psm", "spm"]})
    suffix_share: float = field(default=0.25, metadata={"help": "line-completion FIM: budget share of the suffix"})
    after_cursor: str = field(default="file", metadata={
        "help": "line-completion: the document after the cursor is the rest of the file (from the line's end on), "
                "or none (the document ends at the cursor, as when writing at the end of a file)",
        "choices": ["file", "none"]})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "tokens per completion (default: the server's 48 for line-completion, 256 for humaneval)"})
    batch_size: int | None = field(default=None, metadata={
        "help": "line-completion: prompts per batch (default: 8 with torch, 1 with ONNX: the faster one "
                "in bench/bench_eval.py); humaneval: samples of a prompt decoded together (default 10)"})
    token_healing: bool = field(default=True, metadata={"help": "re-type the prompt's last pre-token (as the server)"})
    # humaneval
    num_samples: int = field(default=1, metadata={"help": "humaneval: samples per problem and temperature"})
    temperatures: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "humaneval: temperatures (0 = greedy, one sample)"})
    top_p: float = field(default=0.95, metadata={"help": "humaneval: nucleus sampling"})
    workers: int = field(default=2, metadata={"help": "humaneval: programs executed in parallel"})
    timeout: float = field(default=3.0, metadata={"help": "humaneval: wall-clock seconds per program"})
    memory_mb: int = field(default=2048, metadata={"help": "humaneval: address-space limit per program"})
    allow_unsandboxed: bool = field(default=False, metadata={
        "help": "humaneval: where no kernel sandbox works (no Linux namespaces), run model-written code anyway "
                "in the fallback, which is not a security boundary"})


def run_task(engine, args: EvaluateArgs) -> dict:
    if args.task in ("perplexity", "line-completion", "repo-completion") and not args.data:
        raise ValueError(f"--data is required for --task {args.task}")
    for name in ("batch_size", "limit", "positions", "num_samples", "workers", "max_new_tokens", "context", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.task == "perplexity":
        from trainer.evaluate.perplexity import evaluate_perplexity

        return evaluate_perplexity(engine, args.data, args.context, args.stride, args.limit)
    if args.task == "line-completion":
        from trainer.evaluate.line_completion import evaluate_line_completion

        if args.cursor == "api":
            raise ValueError("--cursor api is for --task repo-completion")

        max_new = args.max_new_tokens or 64
        if max_new >= engine.info.n_positions:
            raise ValueError(f"--max_new_tokens must be below the model's n_positions ({engine.info.n_positions})")
        count = min(args.positions, args.limit) if args.limit is not None else args.positions
        batch = args.batch_size or (8 if engine.info.engine == "torch" else 1)
        return evaluate_line_completion(engine, args.data, count, args.seed, args.cursor, args.fim, args.fim_layout,
                                        max_new, batch, args.token_healing, args.suffix_share, args.after_cursor)
    if args.task == "repo-completion":
        from trainer.evaluate.repo_completion import evaluate_repo_completion

        count = min(args.positions, args.limit) if args.limit is not None else args.positions
        return evaluate_repo_completion(engine, args.data, count, args.seed, args.cursor, args.max_new_tokens or 48)
    from trainer.evaluate.humaneval import evaluate_humaneval

    if any(t < 0 for t in args.temperatures) or not 0 < args.top_p <= 1:
        raise ValueError("temperatures must be >= 0 and --top_p in (0, 1]")
    journal = f"{args.output}.samples.jsonl" if args.output else None
    identity = {"model": str(Path(args.model).resolve()), "engine": engine.info.engine,
                "precision": engine.info.extra.get("precision", args.precision)}
    return evaluate_humaneval(engine, args.num_samples, args.temperatures, args.top_p, args.max_new_tokens or 256,
                              args.batch_size or 10, args.seed, args.limit, args.workers, args.timeout, args.memory_mb,
                              args.token_healing, journal, identity, args.allow_unsandboxed)


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def format_table(report: dict) -> str:
    """Rows of (metric, value); one column per result group (FIM modes, temperatures)."""
    res = report["results"]
    groups = res if all(isinstance(v, dict) for v in res.values()) else {report["task"]: res}
    # Breakdowns (line completion's `by_suffix`) become rows "by_suffix.<kind>.<metric>".
    groups = {name: {**g, **{f"{k}.{part}.{m}": v for k, sub in g.items() if k != "finish_reasons"
                             and isinstance(sub, dict) and all(isinstance(x, dict) for x in sub.values())
                             for part, row in sub.items() for m, v in row.items()}}
              for name, g in groups.items()}
    metrics = list(dict.fromkeys(k for g in groups.values() for k, v in g.items()
                                 if not isinstance(v, dict) or k == "finish_reasons"))
    header = ["metric", *groups]
    rows = [[m, *(_fmt(g.get(m, "")) for g in groups.values())] for m in metrics]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    info = report["model"]
    title = (f"{report['task']} | {info['path']} | engine {info['engine']} | "
             f"{report['timings']['seconds']:.1f} s")
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _json_safe(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)  # JSON has no NaN / Infinity
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def evaluate(args: EvaluateArgs) -> dict:
    t0 = time.monotonic()
    engine = open_engine(args.model, args.engine, args.precision, args.threads)
    load_seconds = time.monotonic() - t0
    t1 = time.monotonic()
    try:
        out = run_task(engine, args)
    finally:
        engine.close()
    task_seconds = time.monotonic() - t1
    info = engine.info
    report = {
        "task": args.task,
        "model": {"path": str(Path(args.model).resolve()), "engine": info.engine, "name": info.name,
                  "n_positions": info.n_positions, "n_layer": info.n_layer, "vocab_size": info.vocab_size,
                  "supports_fim": info.supports_fim, **({"extra": info.extra} if info.extra else {})},
        "args": asdict(args),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        **out,
    }
    report["timings"] = {**out.get("timings", {}), "load_seconds": load_seconds, "seconds": task_seconds}
    return report


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import stage_args

    try:
        args = stage_args(EvaluateArgs, "codeparrot evaluate", argv)
    except SystemExit as e:  # argparse: usage errors exit 2
        return int(e.code or 0)
    try:
        report = evaluate(args)
    except ModelFolderError as e:
        print(f"codeparrot evaluate: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"codeparrot evaluate: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. the sandbox could not be set up
        print(f"codeparrot evaluate: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(report), indent=1) + "\n", encoding="utf-8")
        print(f"results written to {out}")
    return 0

