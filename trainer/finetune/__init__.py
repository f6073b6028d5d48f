"""`codeparrot finetune`: adapt a trained model to your own code in minutes, and show the gain.

    codeparrot finetune --source ~/src/myproject --output runs/mine [--init-from default|CHECKPOINT]
                        [--minutes 10] [--held-out 0.1]

1. corpus: the sources through the corpus stage (filters, exact and near dedup), split by file
   into train and held-out (a seeded draw), with general code replayed among the training
   files (trainer/finetune/data.py);
2. train: `codeparrot pretrain --init-from` with a fine-tuning schedule (lower peak rate, short
   warmup), the held-out loss evaluated as it goes, the best model kept, bounded by --minutes;
3. merge: the weights moved back toward the starting ones until general code's perplexity is
   within --forgetting-budget (trainer/finetune/merge.py);
4. export to ONNX int8;
5. evaluate the starting model and the fine-tuned one on the held-out files and on a general
   set (trainer/finetune/evaluation.py), print one before/after table, and write the serving
   choice (FIM or left to right) into the model's export.json.

Every stage is skipped when its result is in OUTPUT, and an interrupted training resumes
from its last checkpoint, so running the same command again finishes the job.

    OUTPUT/finetune.json   the settings (a rerun with other settings is refused)
    OUTPUT/corpus/         train-*, valid-* (the held-out files), held_out.json, stats.json
    OUTPUT/train/          the training run (checkpoints/, best/, final/, metrics.jsonl) and merged/
    OUTPUT/model/          the fine-tuned model, ONNX int8: what `codeparrot-ls --model` serves
    OUTPUT/base/           the starting model exported the same way (unless it is the shipped one)
    OUTPUT/general/        the general set;  OUTPUT/eval/{before,after}/   every evaluation
    OUTPUT/comparison.{json,md}   the before/after table
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeparrot_ls.modelfiles import CONFIG_FILE
from trainer.corpus.sources import SourceError
from trainer.finetune.data import DataError

log = logging.getLogger("codeparrot.finetune")
SETTINGS = "finetune.json"
# Settings that define the run: another value means another run (refused without --overwrite).
IDENTITY = ("source", "init_from", "held_out", "seed", "replay", "merge", "forgetting_budget")


@dataclass
class FinetuneArguments:
    source: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "folder of your Python code, or .jsonl[.gz] (repeatable; at least one)"})
    output: str | None = field(default=None, metadata={"help": "folder for the run and the fine-tuned model"})
    init_from: str = field(default="default", metadata={
        "help": "`default` (the shipped model's training checkpoint) or a checkpoint folder from `codeparrot pretrain`"})
    minutes: float = field(default=10.0, metadata={"help": "training time"})
    held_out: float = field(default=0.1, metadata={"help": "share of the files held out to measure the gain (at least one)"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out draw and of training"})
    merge: bool = field(default=True, metadata={
        "help": "merge the fine-tuned weights back toward the starting ones (trainer/finetune/merge.py) by the "
                "largest share whose perplexity on general code rises by at most --forgetting-budget"})
    # Measured on astroid (docs/finetune.md): +2 % on the standard-library code the model trained on
    # came with +9.7 % on standard-library code it never saw; the unseen kind is what users feel.
    forgetting_budget: float = field(default=0.02, metadata={"help": "see --merge (0.02: at most 2 %% higher)"})
    replay: float = field(default=0.5, metadata={
        "help": "share of the training data drawn from the standard library (code the starting model learned), "
                "so the model does not forget general Python; 0: only your files"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (pretraining used 8e-4)"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warmup before the cosine decay"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    max_steps: int | None = field(default=None, metadata={
        "help": "length of the schedule (default: what --minutes allows, from a timed step on this machine, "
                "and at most --max-epochs)"})
    # Measured on astroid (docs/finetune.md): 3.3 passes gave the same gain after the merge as 1.7,
    # with more forgetting; on a fast machine --minutes alone would allow many more.
    max_epochs: float = field(default=2.0, metadata={
        "help": "at most this many passes over the training data (your files and the replay)"})
    positions: int = field(default=200, metadata={"help": "line-completion positions per cursor kind"})
    general: str | None = field(default=None, metadata={
        "help": "general Python for the forgetting check (default: the standard library's valid split)"})
    general_files: int = field(default=20, metadata={"help": "files in the default general set"})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for training and evaluation (default: the faster of 1 and all, timed)"})
    overwrite: bool = field(default=False, metadata={"help": "start again in an OUTPUT that holds another run"})


def check_args(args: FinetuneArguments) -> Path:
    """Everything that can be checked before any work; returns the starting checkpoint folder."""
    from trainer.pretraining.checkpoint import check_init, resolve_init
    from trainer.corpus.sources import resolve_source

    if not args.source:
        raise DataError("--source is required: the folder of the code to fine-tune on")
    if not args.output:
        raise DataError("--output is required")
    if not 0 < args.held_out < 1:
        raise DataError("--held-out must be a fraction in (0, 1)")
    if not 0 <= args.replay < 1:
        raise DataError("--replay must be a fraction in [0, 1)")
    if args.forgetting_budget < 0:
        raise DataError("--forgetting-budget must be at least 0")
    if args.minutes <= 0 or args.positions < 1 or args.batch_size < 1 or args.general_files < 1:
        raise DataError("--minutes, --positions, --batch-size and --general-files must be positive")
    if (args.max_steps is not None and args.max_steps < 1) or (args.threads is not None and args.threads < 1):
        raise DataError("--max-steps and --threads must be at least 1")
    if args.max_epochs <= 0:
        raise DataError("--max-epochs must be positive")
    for spec in args.source:
        if spec.startswith("hf:"):
            raise DataError(f"--source {spec}: fine-tuning takes your own files (a folder or .jsonl[.gz])")
        resolve_source(spec)
    if args.general and not Path(args.general).exists():
        raise DataError(f"--general {args.general}: no such file or folder")
    try:
        init = resolve_init(args.init_from)
        check_init(init)
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {out} exists and is not a folder")
    return init


def settings_of(args: FinetuneArguments, init: Path) -> dict:
    values = asdict(args)
    values.update(source=[str(Path(s).resolve()) for s in args.source], init_from=str(init.resolve()))
    return values


def prepare_output(args: FinetuneArguments, settings: dict) -> dict:
    """Check OUTPUT against an earlier run's settings; returns the settings this run uses."""
    out = Path(args.output)
    path = out / SETTINGS
    if path.is_file() and not args.overwrite:
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in IDENTITY if previous.get(k) != settings[k]]
        if changed:
            raise DataError(f"{out} holds a fine-tune with other {', '.join(changed)}: pass --overwrite to "
                            "replace it, or choose another --output")
        return previous  # the schedule (max_steps) of the run being resumed
    if out.is_dir() and any(out.iterdir()) and not (path.is_file() or args.overwrite):
        raise DataError(f"{out} is not empty and holds no fine-tune: choose another --output")
    if args.overwrite:
        for name in ("corpus", "train", "model", "base", "general", "eval", "comparison.json", "comparison.md",
                     SETTINGS):
            target = out / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return settings


def time_a_step(init: Path, batch_size: int) -> tuple[float, int]:
    """(seconds per optimizer step, torch threads) measured here and now.

    A shared machine can make every thread but one wait for a busy core: then one
    thread trains several times faster than all of them, so both are timed (on a
    batch of 2 sequences, scaled to `batch_size`) and the faster is kept.
    """
    import torch
    from transformers import GPT2LMHeadModel

    from trainer.model import LanguageModelLoss

    lm = GPT2LMHeadModel.from_pretrained(init, dtype=torch.float32)
    model = LanguageModelLoss(lm)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=0.0)
    tokens = lambda n, t: torch.randint(0, lm.config.vocab_size, (n, t))  # noqa: E731

    def step(batch) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    before, timings = torch.get_num_threads(), {}
    try:
        step(tokens(1, 64))  # allocations, kernel selection
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            # The first step at a new size also picks its kernels: the faster of two is the rate.
            batch = tokens(2, lm.config.n_positions)
            timings[threads] = min(step(batch), step(batch)) * batch_size / 2
    finally:
        torch.set_num_threads(before)
    threads = min(timings, key=timings.get)
    return timings[threads], threads


def schedule_for(init: Path, minutes: float, batch_size: int) -> tuple[int, int]:
    """(optimizer steps that fit in `minutes`, threads to train with)."""
    per_step, threads = time_a_step(init, batch_size)
    # Held-out evaluations and checkpoints take about a fifth more.
    return max(20, int(minutes * 60 / (per_step * 1.2))), threads


def epoch_steps(corpus: Path, init: Path, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps of `epochs` passes over the training split, its tokens), in the packed windows of
    the model's length that pretraining trains on."""
    from tokenizers import Tokenizer

    from codeparrot_ls.modelfiles import TOKENIZER_FILE
    from trainer.finetune.data import read_records

    tokenizer = Tokenizer.from_file(str(init / TOKENIZER_FILE))
    tokenizer.encode_special_tokens = True     # as pretraining reads source text
    texts = [r["content"] for r in read_records(corpus, "train")]
    tokens = sum(len(e.ids) + 1 for e in tokenizer.encode_batch(texts))   # + 1: the separator
    window = json.loads((init / CONFIG_FILE).read_text(encoding="utf-8"))["n_positions"]
    return max(1, math.ceil(epochs * tokens / (batch_size * window))), tokens


def _schedule(settings: dict, init: Path, corpus: Path) -> None:
    """Fills in the threads and steps the run was not given: what `--minutes` allows on this
    machine, and at most `--max-epochs` passes over the training data."""
    if settings["max_steps"] is not None and settings["threads"] is not None:
        return
    steps, threads = schedule_for(init, settings["minutes"], settings["batch_size"])
    settings["threads"] = settings["threads"] or threads
    if settings["max_steps"] is None:
        cap, tokens = epoch_steps(corpus, init, settings["batch_size"], settings["max_epochs"])
        if cap < steps:
            print(f"  {cap} steps: {settings['max_epochs']:g} passes over the {tokens:,} training tokens "
                  f"({steps} would fit in {settings['minutes']:g} minutes)")
        settings["max_steps"] = min(steps, cap)


def _stage(number: int, name: str, done: bool) -> None:
    print(f"\n[{number}/6] {name}: {'already done, skipped' if done else 'running'}", flush=True)


def _export(checkpoint: Path, dest: Path) -> None:
    from trainer import export

    tmp = dest.with_name(".tmp-" + dest.name)
    shutil.rmtree(tmp, ignore_errors=True)
    code = export.main(["--checkpoint", str(checkpoint), "--output", str(tmp), "--quantize", "int8",
                        "--keep_fp32", "false"])
    if code:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"the export of {checkpoint} failed (exit code {code})")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def train(settings: dict, corpus: Path, out: Path) -> dict:
    from trainer import pretrain

    steps = settings["max_steps"]
    argv = ["--corpus", str(corpus), "--output", str(out), "--init-from", settings["init_from"], "--keep-best",
            "--learning-rate", str(settings["learning_rate"]), "--warmup-steps", str(settings["warmup_steps"]),
            "--max-steps", str(steps), "--max-minutes", str(settings["minutes"]),
            "--batch-size", str(settings["batch_size"]), "--eval-steps", str(max(5, steps // 5)),
            "--eval-batches", "0", "--save-steps", str(max(5, steps // 5)), "--keep-last", "1",
            "--num-threads", str(settings["threads"]),
            "--seed", str(settings["seed"]), "--report-to", "none"]
    if (out / "latest").exists():
        argv += ["--resume", "latest"]
    print("  $ codeparrot pretrain " + " ".join(shlex.quote(a) for a in argv), flush=True)
    load, started = os.getloadavg()[0], time.monotonic()
    code = pretrain.main(argv)
    if code:
        raise RuntimeError(f"training failed (exit code {code}); see the messages above")
    from trainer.pretraining import checkpoint as ckpt

    state, best = ckpt.read_state(ckpt.latest_checkpoint(out)), ckpt.read_best(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    evals = [r for r in rows if "eval_loss" in r]
    return {"steps": state["step"], "tokens": state["tokens_seen"], "seconds": round(time.monotonic() - started, 1),
            "held_out_loss_start": evals[0]["eval_loss"] if evals else None,
            "held_out_loss_best": best["eval_loss"], "best_step": best["step"],
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def _corpus_stage(args: FinetuneArguments, settings: dict, corpus: Path, out: Path, created: bool) -> dict:
    from trainer.finetune.data import build_finetune_corpus

    done = (corpus / "held_out.json").is_file()
    _stage(1, f"corpus and held-out split ({args.held_out:g} of the files, replay {settings['replay']:g})", done)
    if not done:
        try:
            build_finetune_corpus(settings["source"], corpus, settings["held_out"], settings["seed"],
                                  settings["replay"])
        except (DataError, SourceError):
            if created:
                shutil.rmtree(out, ignore_errors=True)  # nothing half-written
            raise
    split = json.loads((corpus / "held_out.json").read_text(encoding="utf-8"))
    print(f"  {split['files_kept']} of {split['files_seen']} files kept: {split['train']['files']} to train on, "
          f"{split['held_out']['files']} held out")
    return split


def _train_stage(settings: dict, init: Path, corpus: Path, train_dir: Path) -> tuple[dict, Path]:
    """Trains (stage 2) and merges (stage 3); returns the training summary and the checkpoint to export."""
    from trainer.finetune.merge import MERGE_FILE, merge

    final = train_dir / "final"
    done = (final / CONFIG_FILE).is_file() and (train_dir / "summary.json").is_file()
    _stage(2, f"fine-tune from {init} ({settings['minutes']:g} minutes at most, {settings['max_steps']} steps)", done)
    if not done:
        summary = train(settings, corpus, train_dir)
        (train_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    summary = json.loads((train_dir / "summary.json").read_text(encoding="utf-8"))
    budget, merged = settings["forgetting_budget"], train_dir / "merged"
    done = not settings["merge"] or (merged / MERGE_FILE).is_file()
    _stage(3, "merge back toward the starting weights" if settings["merge"] else "merge: off (--merge false)", done)
    if not settings["merge"]:
        return summary, final
    if not done:
        merge(init, final, merged, budget, settings["seed"])
    summary["merge"] = json.loads((merged / MERGE_FILE).read_text(encoding="utf-8"))
    tried = ", ".join(f"{t['share']:g}: {t['perplexity']:.2f}" for t in summary["merge"]["tried"])
    print(f"  share of the fine-tuned weights {summary['merge']['share']:g} (selection-set perplexity by share: "
          f"{tried}; at most +{budget:.0%})")
    return summary, merged


def run(args: FinetuneArguments) -> int:
    from trainer.finetune.data import build_general_set
    from trainer.finetune.evaluation import compare, evaluation_plan, run_evaluations, write_comparison
    from trainer.pretraining.checkpoint import default_checkpoint
    from trainer.quickstart import record_fim_choice

    init = check_args(args)
    out = Path(args.output).resolve()
    settings = prepare_output(args, settings_of(args, init))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    corpus, train_dir, model = out / "corpus", out / "train", out / "model"
    started = time.monotonic()

    split = _corpus_stage(args, settings, corpus, out, created)
    _schedule(settings, init, corpus)
    (out / SETTINGS).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    summary, checkpoint = _train_stage(settings, init, corpus, train_dir)

    shipped = default_checkpoint().parent
    base = shipped if init.resolve() == default_checkpoint().resolve() and \
        (shipped / "model.int8.onnx").is_file() else out / "base"
    done = (model / "export.json").is_file() and (base / "export.json").is_file()
    _stage(4, "export to ONNX (int8)", done)
    if not (model / "export.json").is_file():
        _export(checkpoint, model)
    if not (base / "export.json").is_file():
        _export(init, base)

    _stage(5, "evaluate before and after (held-out files, general set)", False)
    general = Path(args.general) if args.general else out / "general"
    if not args.general and not general.is_dir():  # renamed into place once complete
        build_general_set(general, args.general_files)
    plan = evaluation_plan(corpus, general, args.positions, settings["seed"], settings["threads"])
    before = run_evaluations(base, plan, out / "eval" / "before")
    after = run_evaluations(model, plan, out / "eval" / "after")
    choice = record_fim_choice(model, out / "eval" / "after" / "line_random.json")

    _stage(6, "before/after", False)
    before_name = "default" if base == shipped else "start"
    context = {"sources": settings["source"], "init_from": str(init), "held_out_files": split["held_out"]["files"],
               "train_files": split["train"]["files"], "training": summary, "serving": choice}
    print(write_comparison(out, compare(before, after), context, before_name, "fine-tuned"))
    _print_summary(summary, choice, started, model, out)
    return 0


def _print_summary(summary: dict, choice: str | None, started: float, model: Path, out: Path) -> None:
    print(f"\n  trained {summary['steps']} steps ({summary['tokens']:,} tokens) in {summary['seconds'] / 60:.1f} min; "
          f"held-out loss {summary['held_out_loss_start']:.3f} -> {summary['held_out_loss_best']:.3f} "
          f"(best at step {summary['best_step']}); load average {summary['load_average_before']}")
    if choice:
        print(f"  serving prompt: {choice}")
    print(f"\nfinetune finished in {(time.monotonic() - started) / 60:.1f} minutes.")
    print(f"  your model: {model}\n  serve it:   codeparrot-ls --model {shlex.quote(str(model))}")
    print(f"  the table:  {out / 'comparison.md'}")


def parse_args(argv: list[str]) -> FinetuneArguments:
    from trainer.cli import stage_args
    from trainer.corpus import flatten

    args = stage_args(FinetuneArguments, "codeparrot finetune", argv, __doc__.split("\n\n")[0])
    args.source = flatten(args.source)
    return args


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import stage_logging

    stage_logging()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help 0
        return int(exc.code or 0)
    try:
        return run(args)
    except (DataError, SourceError) as exc:
        print(f"codeparrot finetune: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"codeparrot finetune: {exc}", file=sys.stderr)
        return 1

