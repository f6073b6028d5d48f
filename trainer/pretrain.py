"""Pretrain a GPT-2-style code model with Accelerate: one CPU, one GPU or many.

    codeparrot pretrain --corpus DIR --tokenizer DIR --output DIR [--model-size tiny] ...
    accelerate launch [--num_processes N] trainer/pretrain.py --corpus DIR ...
    codeparrot pretrain --config configs/pretrain/tiny_cpu.yaml --max-steps 100

Arguments come from flags, from a JSON/YAML file (`--config FILE`, flags override
it), or both. `--resume` (alone, or `--resume latest`) continues the newest complete
checkpoint in OUTPUT; `--resume PATH` continues a given one. See trainer/pretraining/checkpoint.py
for the output layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script (`accelerate launch trainer/pretrain.py`): import the package from the
    # repository root rather than letting trainer/*.py shadow top-level modules (evaluate, ...).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from codeparrot_ls.modelfiles import TOKENIZER_FILE
from trainer.pretraining.args import PretrainArguments, UsageError, check_args, parse_args, read_config  # noqa: F401


# Arguments that shape the data stream: changing one on --resume changes the data that follows.
DATA_ARGS = ("corpus", "seq_length", "batch_size", "gradient_accumulation_steps", "seed", "fim_rate",
             "fim_spm_rate", "fim_mode", "quality_tokens", "shuffle_buffer")


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on biases, not on LayerNorm weights.

    GPT-2 names its norms ln_1/ln_2/ln_f, so a name filter for "LayerNorm.weight"
    would match nothing; the module type and the tensor rank are what count.
    """
    import torch

    norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in norm_params else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def setup_logging(is_main: bool) -> logging.Logger:
    # No-op when the host program (or pytest) already configured logging.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("codeparrot").setLevel(logging.INFO if is_main else logging.WARNING)
    for chatty in ("accelerate.accelerator", "accelerate.checkpointing"):  # a line per saved file
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return logging.getLogger("codeparrot.pretrain")


def chain_digest(previous: str, batch) -> str:
    """A running fingerprint of the data one rank trained on (compares runs and ranks)."""
    return hashlib.sha256(previous.encode() + batch.numpy().tobytes()).hexdigest()[:32]


class MetricsFile:
    """OUTPUT/metrics.jsonl, one JSON object per line (main process only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.is_file():
            # Rows written after the checkpoint by the interrupted run are replayed: drop them.
            rows = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        elif enabled and resume_step is None and path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")


def evaluate(accelerator, model, dataset, max_batches: int) -> tuple[float, float]:
    """Mean token loss over the valid stream of every rank, and its perplexity."""
    import torch

    from trainer.pretraining.data import make_loader

    unwrapped = accelerator.unwrap_model(model)  # no DDP collectives: ranks may hold different batch counts
    unwrapped.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for i, batch in enumerate(make_loader(dataset, workers=0)):
            if max_batches and i >= max_batches:
                break
            batch = batch.to(accelerator.device)
            loss = unwrapped(batch).double()
            n = batch.numel() - batch.shape[0]  # predicted tokens
            total += torch.stack([loss * n, torch.tensor(float(n), dtype=torch.float64, device=batch.device)])
    unwrapped.train()
    total = accelerator.reduce(total, reduction="sum")
    if total[1] == 0:
        return math.nan, math.nan
    loss = (total[0] / total[1]).item()
    return loss, perplexity(loss)


def run(args: PretrainArguments) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm
    from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

    from trainer.pretraining import checkpoint as ckpt
    from trainer.pretraining.data import PackedDataset, make_loader, shard_files
    from trainer.model import LanguageModelLoss, build_model, parameter_counts, training_flops_per_token

    output = Path(args.output)
    trackers = {"none": None, "all": "all", "wandb": "wandb", "tensorboard": "tensorboard"}[args.report_to]
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, log_with=trackers, project_dir=str(output))
    log = setup_logging(accelerator.is_main_process)
    if accelerator.device.type == "cpu":
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    set_seed(args.seed)
    if not args.resume and (ckpt.list_checkpoints(output) or (output / ckpt.FINAL).exists()):
        if not args.overwrite:
            raise UsageError(f"{output} already holds a run: pass --resume to continue it, "
                             "or --overwrite to start again (its checkpoints are deleted)")
    accelerator.wait_for_everyone()  # every rank has checked before the main process deletes anything
    if accelerator.is_main_process:
        if args.overwrite and not args.resume:
            ckpt.remove_run(output)
        output.mkdir(parents=True, exist_ok=True)
        if not args.resume:  # a best model from an earlier, unfinished run is not this run's
            shutil.rmtree(output / ckpt.BEST, ignore_errors=True)
        ckpt.remove_partial_saves(output)
    accelerator.wait_for_everyone()

    resume_dir = ckpt.resolve_resume(output, args.resume) if args.resume else None
    state = ckpt.read_state(resume_dir) if resume_dir else {}
    if resume_dir and state.get("world_size") != accelerator.num_processes:
        raise UsageError(f"{resume_dir} was written by {state.get('world_size')} processes, this run has "
                         f"{accelerator.num_processes}: the data position would not be exact")
    tokenizer_file = Path(args.tokenizer) / TOKENIZER_FILE
    if resume_dir:
        model = GPT2LMHeadModel.from_pretrained(resume_dir, dtype=torch.float32)
    elif args.init_from:  # trained in fp32 whatever precision the checkpoint was stored in
        model = GPT2LMHeadModel.from_pretrained(args.init_from, dtype=torch.float32)
        log.info("starting from %s", args.init_from)
    else:
        try:
            model = build_model(args.model_size, Tokenizer.from_file(str(tokenizer_file)), args.model_config)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    seq_length = args.seq_length or model.config.n_positions
    if seq_length > model.config.n_positions:
        raise UsageError(f"--seq-length {seq_length} exceeds the model's {model.config.n_positions} positions")
    if args.gradient_checkpointing:  # transformers 5 renamed it; keep older versions working
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        log.info("activation checkpointing on")

    fused = args.fused_optimizer and accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), fused=fused or None)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    lm = model  # the GPT2LMHeadModel that is saved; `model` becomes what computes the loss
    if args.torch_compile:
        # In place (nn.Module.compile): parameter names, hence saved checkpoints, stay unchanged.
        lm.transformer.compile()
    model, optimizer = accelerator.prepare(LanguageModelLoss(lm, args.loss_chunk_size), optimizer)
    # The schedule is stepped once per optimizer step whatever the number of processes,
    # so it is not prepared (that would step it once per process); it is still checkpointed.
    accelerator.register_for_checkpointing(scheduler)
    # Model weights live in the checkpoint's model.safetensors: accelerate must not save a copy.
    accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, inp: models.clear())

    files = shard_files(args.corpus, "train")
    data_kw = dict(seq_length=seq_length, batch_size=args.batch_size, seed=args.seed, fim_rate=args.fim_rate,
                   fim_spm_rate=args.fim_spm_rate, fim_mode=args.fim_mode, quality_tokens=args.quality_tokens,
                   rank=accelerator.process_index, world_size=accelerator.num_processes)
    train_data = PackedDataset(files, tokenizer_file, infinite=True, shuffle_buffer=args.shuffle_buffer,
                               skip_batches=state.get("batches_consumed", 0), **data_kw)
    try:
        train_data.load_tokenizer()  # fail here, not in a worker, if special tokens are missing
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    valid_files = shard_files(args.corpus, "valid") if args.eval_steps else []
    changed = {k: (v, getattr(args, k)) for k, v in state.get("args", {}).items()
               if k in DATA_ARGS and v != getattr(args, k)}
    if changed:
        log.warning("resuming with other data settings than %s, so the data stream is not the same: %s",
                    resume_dir, changed)
    if resume_dir and state.get("dataloader_workers") != args.dataloader_workers:
        raise UsageError(f"{resume_dir} was written with --dataloader-workers {state.get('dataloader_workers')}")
    batches = iter(make_loader(train_data, args.dataloader_workers))
    if resume_dir:
        accelerator.load_state(str(resume_dir / ckpt.ACCELERATE_STATE))  # after the loader: RNG as saved
        log.info("resumed from %s at step %d", resume_dir, state["step"])
        if scheduler.base_lrs[0] != args.learning_rate:
            # The restored schedule would keep the checkpoint's peak rate; the one asked for wins
            # (a new cosine cycle from a trained model usually wants a lower one).
            log.warning("--learning-rate %g differs from the checkpoint's %g: the schedule continues with %g",
                        args.learning_rate, scheduler.base_lrs[0], args.learning_rate)
            scheduler.base_lrs = [args.learning_rate] * len(scheduler.base_lrs)
            for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = args.learning_rate
                group["lr"] = args.learning_rate * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    step = state.get("step", 0)
    consumed = state.get("batches_consumed", 0)
    tokens_seen = state.get("tokens_seen", 0)
    skipped, in_a_row = state.get("nonfinite_skipped", 0), state.get("consecutive_nonfinite", 0)
    digest = state.get("data_digest", "")
    poisoned = {int(s) for s in args.fault_nan_loss_steps.split(",") if s.strip()}
    counts = parameter_counts(lm)
    flops_per_token = training_flops_per_token(lm.config, seq_length)
    tokens_per_step = args.batch_size * seq_length * args.gradient_accumulation_steps * accelerator.num_processes
    if accelerator.is_main_process:
        log.info("model %s: %.2f M parameters; %d processes on %s, mixed precision %s; %d tokens per step",
                 args.init_from or args.model_size, counts["total"] / 1e6, accelerator.num_processes, accelerator.device,
                 args.mixed_precision, tokens_per_step)
    config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers("pretrain", config=config)
    metrics = MetricsFile(output / "metrics.jsonl", accelerator.is_main_process, step if resume_dir else None)

    def save(final: bool = False) -> Path:
        digests = gather_object([digest])
        kill = ckpt_kill if args.fault_kill_in_save == step else None
        return ckpt.save_checkpoint(accelerator, lm, Path(args.tokenizer), output, {
            "step": step, "batches_consumed": consumed, "tokens_seen": tokens_seen,
            "nonfinite_skipped": skipped, "consecutive_nonfinite": in_a_row, "data_digest": digest,
            "data_digests": digests, "world_size": accelerator.num_processes,
            "dataloader_workers": args.dataloader_workers, "seq_length": seq_length, "final": final,
            "args": config}, args.keep_last, before_rename=kill)

    def ckpt_kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    best = ckpt.best_loss(output) if resume_dir else None

    def evaluate_and_keep_best() -> None:
        nonlocal best
        valid = PackedDataset(valid_files, tokenizer_file, infinite=False, shuffle_buffer=0, **data_kw)
        eval_loss, ppl = evaluate(accelerator, model, valid, args.eval_batches)
        metrics.write({"step": step, "tokens": tokens_seen, "eval_loss": eval_loss, "perplexity": ppl})
        accelerator.log({"eval_loss": eval_loss, "perplexity": ppl}, step=step)
        log.info("step %d: eval loss %.4f, perplexity %.2f", step, eval_loss, ppl)
        if args.keep_best and accelerator.is_main_process and math.isfinite(eval_loss) \
                and (best is None or eval_loss < best):
            best = eval_loss
            ckpt.save_best(lm, Path(args.tokenizer), output, {"step": step, "eval_loss": eval_loss, "perplexity": ppl})

    if args.keep_best and not resume_dir:
        evaluate_and_keep_best()  # the starting point: training must beat it to replace it
    start = window_start = time.perf_counter()
    window_cpu = time.process_time()  # this process's CPU time (all its threads; not data workers)
    window_loss, window_steps, last_saved, status = 0.0, 0, (step if resume_dir else None), 0
    bar = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process,
               desc="pretrain", dynamic_ncols=True)
    model.train()
    while step < args.max_steps:
        loss_sum = torch.zeros((), device=accelerator.device)
        for _ in range(args.gradient_accumulation_steps):
            batch = next(batches)
            consumed += 1
            digest = chain_digest(digest, batch)
            batch = batch.to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(model):
                loss = model(batch)
                if step + 1 in poisoned:
                    loss = loss * math.nan  # fault injection
                loss_sum += loss.detach().float()
                accelerator.backward(loss)
                if not accelerator.sync_gradients:
                    continue
                mean_loss = loss_sum / args.gradient_accumulation_steps
                time_up = args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes
                flags = accelerator.reduce(torch.stack([(~torch.isfinite(mean_loss)).float(),
                                                        torch.tensor(float(time_up), device=accelerator.device)]),
                                           reduction="sum")
                bad = bool(flags[0] > 0)
                if not bad:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    # fp16's loss scaler handles overflowing gradients itself (it skips and rescales).
                    bad = args.mixed_precision != "fp16" and not math.isfinite(float(grad_norm))
                if not bad:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        tokens_seen += tokens_per_step
        bar.update(1)
        if bad:
            skipped, in_a_row = skipped + 1, in_a_row + 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)",
                        step, in_a_row, skipped)
            if in_a_row >= args.max_nonfinite:
                log.error("stopping: %d non-finite steps in a row (lower --learning-rate, or check the data); "
                          "the last good checkpoint is %s", in_a_row, ckpt.latest_checkpoint(output))
                status = 1
                break
        else:
            in_a_row = 0
            window_loss += mean_loss.item()
            window_steps += 1
        if step % args.logging_steps == 0 or step == args.max_steps:
            elapsed = time.perf_counter() - window_start
            n_steps = args.logging_steps if step % args.logging_steps == 0 else step % args.logging_steps
            loss_value = accelerator.reduce(torch.tensor(window_loss / max(window_steps, 1),
                                                         device=accelerator.device), reduction="mean").item()
            tps = n_steps * tokens_per_step / elapsed
            cpu = max(time.process_time() - window_cpu, 1e-9)
            row = {"step": step, "loss": loss_value if window_steps else None,
                   "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen, "tokens_per_s": round(tps, 1),
                   "tokens_per_cpu_s": round(n_steps * tokens_per_step / accelerator.num_processes / cpu, 1),
                   "tflops_per_process": round(tps * flops_per_token / accelerator.num_processes / 1e12, 4),
                   "nonfinite_skipped": skipped, "elapsed_s": round(time.perf_counter() - start, 2)}
            metrics.write(row)
            accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)
            bar.set_postfix(loss=f"{row['loss']:.3f}" if window_steps else "-", tok_s=f"{tps:.0f}")
            window_loss, window_steps, window_start, window_cpu = 0.0, 0, time.perf_counter(), time.process_time()
        if args.eval_steps and (step % args.eval_steps == 0 or step == args.max_steps or bool(flags[1] > 0)):
            eval_start, eval_cpu = time.perf_counter(), time.process_time()
            evaluate_and_keep_best()
            # evaluation time is not training throughput
            window_start, window_cpu = window_start + time.perf_counter() - eval_start, window_cpu + time.process_time() - eval_cpu
        if args.fault_kill_at_step == step:
            ckpt_kill()
        if step % args.save_steps == 0 and in_a_row:
            log.warning("step %d: no checkpoint while steps are non-finite", step)
        elif step % args.save_steps == 0:
            save_start, save_cpu = time.perf_counter(), time.process_time()
            save()
            last_saved = step
            window_start, window_cpu = window_start + time.perf_counter() - save_start, window_cpu + time.process_time() - save_cpu
        if bool(flags[1] > 0):
            log.info("stopping at step %d: --max-minutes %s reached", step, args.max_minutes)
            break
    bar.close()
    if status == 0:
        path = save(final=True) if last_saved != step else ckpt.latest_checkpoint(output)
        if accelerator.is_main_process:
            if args.keep_best and (output / ckpt.BEST).is_dir():
                path = output / ckpt.BEST
                log.info("keeping the best evaluated model: %s", ckpt.read_best(output))
            final = ckpt.publish_final(output, path)
            log.info("done at step %d: model in %s", step, final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.num_processes == 1:
        # Accelerate's state is a process-wide singleton: reset it so that a later in-process
        # call (the quickstart, tests) may choose another precision or accumulation.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return status



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        check_args(args)
    except (UsageError, OSError, json.JSONDecodeError) as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (UsageError, FileNotFoundError) as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
