"""Pretrain a GPT-2-style code model with Accelerate: one CPU, one GPU or many.

    codeparrot pretrain --corpus DIR --tokenizer DIR --output DIR [--model-size tiny] ...
    accelerate launch [--num_processes N] trainer/pretrain.py --corpus DIR ...
    codeparrot pretrain --config configs/pretrain/tiny_cpu.yaml --max-steps 100

Arguments come from flags, from a JSON/YAML file (`--config FILE`, flags override
it), or both. `--resume` (alone, or `--resume latest`) continues the newest complete
checkpoint in OUTPUT; `--resume PATH` continues a given one. See trainer/pretraining/checkpoint.py
for the output layout.

`run` sets up a `Pretraining` and `train` is its loop; the parts are in trainer/pretraining/.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script (`accelerate launch trainer/pretrain.py`): import the package from the
    # repository root rather than letting trainer/*.py shadow top-level modules (evaluate, ...).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from codeparrot_ls.modelfiles import TOKENIZER_FILE
from trainer.pretraining import checkpoint as ckpt
from trainer.pretraining.args import PretrainArguments, UsageError, check_args, parse_args
from trainer.pretraining.progress import MetricsFile, RunState, ThroughputWindow, chain_digest
from trainer.pretraining.setup import (load_model, make_accelerator, make_optimizer, override_learning_rate,
                                       prepare_output, release_accelerator, setup_logging)

# Arguments that shape the data stream: changing one on --resume changes the data that follows.
DATA_ARGS = ("corpus", "seq_length", "batch_size", "gradient_accumulation_steps", "seed", "fim_rate",
             "fim_spm_rate", "fim_mode", "quality_tokens", "shuffle_buffer")


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


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


def kill_self() -> None:
    """Fault injection: die as a preempted job does."""
    os.kill(os.getpid(), signal.SIGKILL)


def resume_point(args: PretrainArguments, output: Path, accelerator, log) -> tuple[Path | None, RunState | None]:
    """The checkpoint to continue and its state, once checked against this run's settings."""
    if not args.resume:
        return None, None
    resume_dir = ckpt.resolve_resume(output, args.resume)
    saved = RunState.read(resume_dir)
    if saved.world_size != accelerator.num_processes:
        raise UsageError(f"{resume_dir} was written by {saved.world_size} processes, this run has "
                         f"{accelerator.num_processes}: the data position would not be exact")
    if saved.dataloader_workers != args.dataloader_workers:
        raise UsageError(f"{resume_dir} was written with --dataloader-workers {saved.dataloader_workers}")
    changed = {k: (v, getattr(args, k)) for k, v in saved.args.items() if k in DATA_ARGS and v != getattr(args, k)}
    if changed:
        log.warning("resuming with other data settings than %s, so the data stream is not the same: %s",
                    resume_dir, changed)
    return resume_dir, saved


class Pretraining:
    """One run's parts (accelerator, model, optimizer, data, state) and the steps of its loop."""

    def __init__(self, args: PretrainArguments, accelerator, log, output: Path):
        from trainer.model import LanguageModelLoss, parameter_counts, training_flops_per_token

        self.args, self.accelerator, self.log, self.output = args, accelerator, log, output
        self.resume_dir, saved = resume_point(args, output, accelerator, log)
        self.lm, self.seq_length = load_model(args, self.resume_dir, log)  # the model that is saved
        self.optimizer, self.scheduler = make_optimizer(self.lm, args, accelerator.device.type)
        if args.torch_compile:
            # In place (nn.Module.compile): parameter names, hence saved checkpoints, stay unchanged.
            self.lm.transformer.compile()
        # `model` computes the loss (LanguageModelLoss over the LM), wrapped for the processes.
        self.model, self.optimizer = accelerator.prepare(LanguageModelLoss(self.lm, args.loss_chunk_size),
                                                         self.optimizer)
        # The schedule is stepped once per optimizer step whatever the number of processes,
        # so it is not prepared (that would step it once per process); it is still checkpointed.
        accelerator.register_for_checkpointing(self.scheduler)
        # Model weights live in the checkpoint's model.safetensors: accelerate must not save a copy.
        accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, inp: models.clear())

        self.config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        self.state = replace(saved, seq_length=self.seq_length, args=self.config) if saved else RunState(
            world_size=accelerator.num_processes, dataloader_workers=args.dataloader_workers,
            seq_length=self.seq_length, args=self.config)
        self.batches = self.open_data()
        if self.resume_dir:
            self.restore()
        self.poisoned = {int(s) for s in args.fault_nan_loss_steps.split(",") if s.strip()}
        self.flops_per_token = training_flops_per_token(self.lm.config, self.seq_length)
        self.tokens_per_step = (args.batch_size * self.seq_length * args.gradient_accumulation_steps
                                * accelerator.num_processes)
        if accelerator.is_main_process:
            log.info("model %s: %.2f M parameters; %d processes on %s, mixed precision %s; %d tokens per step",
                     args.init_from or args.model_size, parameter_counts(self.lm)["total"] / 1e6,
                     accelerator.num_processes, accelerator.device, args.mixed_precision, self.tokens_per_step)
        accelerator.init_trackers("pretrain", config=self.config)
        self.metrics = MetricsFile(output / "metrics.jsonl", accelerator.is_main_process,
                                   self.state.step if self.resume_dir else None)
        self.best = ckpt.best_loss(output) if self.resume_dir else None
        self.last_saved = self.state.step if self.resume_dir else None
        if args.keep_best and not self.resume_dir:
            self.evaluate_and_keep_best()  # the starting point: training must beat it to replace it
        self.started = time.perf_counter()

    def open_data(self):
        """The training batches of this rank, from the state's data position."""
        from trainer.pretraining.data import PackedDataset, make_loader, shard_files

        args = self.args
        self.tokenizer_file = Path(args.tokenizer) / TOKENIZER_FILE
        self.data_kw = dict(seq_length=self.seq_length, batch_size=args.batch_size, seed=args.seed,
                            fim_rate=args.fim_rate, fim_spm_rate=args.fim_spm_rate, fim_mode=args.fim_mode,
                            quality_tokens=args.quality_tokens, rank=self.accelerator.process_index,
                            world_size=self.accelerator.num_processes)
        train_data = PackedDataset(shard_files(args.corpus, "train"), self.tokenizer_file, infinite=True,
                                   shuffle_buffer=args.shuffle_buffer, skip_batches=self.state.batches_consumed,
                                   **self.data_kw)
        try:
            train_data.load_tokenizer()  # fail here, not in a worker, if special tokens are missing
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self.valid_files = shard_files(args.corpus, "valid") if args.eval_steps else []
        return iter(make_loader(train_data, args.dataloader_workers))

    def restore(self) -> None:
        """Optimizer, schedule and RNG as saved; called after the data loader is made (RNG as saved)."""
        args = self.args
        self.accelerator.load_state(str(self.resume_dir / ckpt.ACCELERATE_STATE))
        self.log.info("resumed from %s at step %d", self.resume_dir, self.state.step)
        if self.scheduler.base_lrs[0] != args.learning_rate:
            # The restored schedule would keep the checkpoint's peak rate; the one asked for wins
            # (a new cosine cycle from a trained model usually wants a lower one).
            self.log.warning("--learning-rate %g differs from the checkpoint's %g: the schedule continues with %g",
                             args.learning_rate, self.scheduler.base_lrs[0], args.learning_rate)
            override_learning_rate(self.scheduler, args.learning_rate)

    def accumulate_gradients(self):
        """Forward and backward over one optimizer step's micro-batches; returns their mean loss."""
        import torch

        accelerator, state = self.accelerator, self.state
        loss_sum = torch.zeros((), device=accelerator.device)
        for _ in range(self.args.gradient_accumulation_steps):
            batch = next(self.batches)
            state.batches_consumed += 1
            state.data_digest = chain_digest(state.data_digest, batch)
            batch = batch.to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(self.model):
                loss = self.model(batch)
                if state.step + 1 in self.poisoned:
                    loss = loss * math.nan  # fault injection
                loss_sum += loss.detach().float()
                accelerator.backward(loss)
        if not accelerator.sync_gradients:  # the accelerator counts micro-batches as this loop does
            raise RuntimeError("the last micro-batch of a step did not synchronise gradients")
        return loss_sum / self.args.gradient_accumulation_steps

    def update(self, mean_loss) -> tuple[bool, bool]:
        """Apply the accumulated gradients unless a rank's loss or the gradient norm is
        non-finite. Returns (skipped, time is up), both agreed by every rank."""
        import torch

        args, accelerator = self.args, self.accelerator
        time_up = args.max_minutes is not None and time.perf_counter() - self.started > 60 * args.max_minutes
        flags = accelerator.reduce(torch.stack([(~torch.isfinite(mean_loss)).float(),
                                                torch.tensor(float(time_up), device=accelerator.device)]),
                                   reduction="sum")
        skipped = bool(flags[0] > 0)
        if not skipped:
            grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            # fp16's loss scaler handles overflowing gradients itself (it skips and rescales).
            skipped = args.mixed_precision != "fp16" and not math.isfinite(float(grad_norm))
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return skipped, bool(flags[1] > 0)

    def log_progress(self, window: ThroughputWindow, bar) -> None:
        import torch

        accelerator, state = self.accelerator, self.state
        loss = accelerator.reduce(torch.tensor(window.mean_loss(), device=accelerator.device), reduction="mean").item()
        tps, tokens_per_cpu_s = window.tokens_per_s(self.tokens_per_step)
        row = {"step": state.step, "loss": loss if window.loss_steps else None,
               "lr": self.scheduler.get_last_lr()[0], "tokens": state.tokens_seen, "tokens_per_s": round(tps, 1),
               "tokens_per_cpu_s": round(tokens_per_cpu_s / accelerator.num_processes, 1),
               "tflops_per_process": round(tps * self.flops_per_token / accelerator.num_processes / 1e12, 4),
               "nonfinite_skipped": state.nonfinite_skipped, "elapsed_s": round(time.perf_counter() - self.started, 2)}
        self.metrics.write(row)
        accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=state.step)
        bar.set_postfix(loss=f"{loss:.3f}" if window.loss_steps else "-", tok_s=f"{tps:.0f}")
        window.reset()

    def evaluate_and_keep_best(self) -> None:
        from trainer.pretraining.data import PackedDataset

        args, step = self.args, self.state.step
        valid = PackedDataset(self.valid_files, self.tokenizer_file, infinite=False, shuffle_buffer=0, **self.data_kw)
        eval_loss, ppl = evaluate(self.accelerator, self.model, valid, args.eval_batches)
        self.metrics.write({"step": step, "tokens": self.state.tokens_seen, "eval_loss": eval_loss, "perplexity": ppl})
        self.accelerator.log({"eval_loss": eval_loss, "perplexity": ppl}, step=step)
        self.log.info("step %d: eval loss %.4f, perplexity %.2f", step, eval_loss, ppl)
        if args.keep_best and self.accelerator.is_main_process and math.isfinite(eval_loss) \
                and (self.best is None or eval_loss < self.best):
            self.best = eval_loss
            ckpt.save_best(self.lm, Path(args.tokenizer), self.output,
                           {"step": step, "eval_loss": eval_loss, "perplexity": ppl})

    def save(self, final: bool = False) -> Path:
        from accelerate.utils import gather_object

        state = self.state
        state.data_digests, state.final = gather_object([state.data_digest]), final
        kill = kill_self if self.args.fault_kill_in_save == state.step else None
        path = ckpt.save_checkpoint(self.accelerator, self.lm, Path(self.args.tokenizer), self.output,
                                    asdict(state), self.args.keep_last, before_rename=kill)
        self.last_saved = state.step
        return path

    def publish(self) -> None:
        """The run's model into OUTPUT/final: the best evaluated one if kept, else the last step's."""
        output, step = self.output, self.state.step
        path = self.save(final=True) if self.last_saved != step else ckpt.latest_checkpoint(output)
        if self.accelerator.is_main_process:
            if self.args.keep_best and (output / ckpt.BEST).is_dir():
                path = output / ckpt.BEST
                self.log.info("keeping the best evaluated model: %s", ckpt.read_best(output))
            self.log.info("done at step %d: model in %s", step, ckpt.publish_final(output, path))


def train(run: Pretraining) -> int:
    """The loop: step, count, log, evaluate, save. Returns the exit status."""
    from tqdm.auto import tqdm

    args, state, log = run.args, run.state, run.log
    window = ThroughputWindow()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not run.accelerator.is_local_main_process,
               desc="pretrain", dynamic_ncols=True)
    run.model.train()
    while state.step < args.max_steps:
        mean_loss = run.accumulate_gradients()
        skipped, time_up = run.update(mean_loss)
        state.step += 1
        state.tokens_seen += run.tokens_per_step
        bar.update(1)
        if skipped:
            state.nonfinite_skipped += 1
            state.consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)",
                        state.step, state.consecutive_nonfinite, state.nonfinite_skipped)
            if state.consecutive_nonfinite >= args.max_nonfinite:
                log.error("stopping: %d non-finite steps in a row (lower --learning-rate, or check the data); "
                          "the last good checkpoint is %s", state.consecutive_nonfinite,
                          ckpt.latest_checkpoint(run.output))
                bar.close()
                return 1
        else:
            state.consecutive_nonfinite = 0
        window.add(None if skipped else mean_loss.item())
        if state.step % args.logging_steps == 0 or state.step == args.max_steps:
            run.log_progress(window, bar)
        if args.eval_steps and (state.step % args.eval_steps == 0 or state.step == args.max_steps or time_up):
            with window.paused():
                run.evaluate_and_keep_best()
        if args.fault_kill_at_step == state.step:
            kill_self()
        if state.step % args.save_steps == 0 and state.consecutive_nonfinite:
            log.warning("step %d: no checkpoint while steps are non-finite", state.step)
        elif state.step % args.save_steps == 0:
            with window.paused():
                run.save()
        if time_up:
            log.info("stopping at step %d: --max-minutes %s reached", state.step, args.max_minutes)
            break
    bar.close()
    return 0


def run(args: PretrainArguments) -> int:
    from accelerate.utils import set_seed

    output = Path(args.output)
    accelerator = make_accelerator(args, output)
    log = setup_logging(accelerator.is_main_process)
    set_seed(args.seed)
    prepare_output(accelerator, output, args.resume, args.overwrite)
    pretraining = Pretraining(args, accelerator, log, output)
    status = train(pretraining)
    if status == 0:
        pretraining.publish()
    accelerator.wait_for_everyone()
    release_accelerator(accelerator)
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
