"""Setting up a pretraining run: the accelerator, the output folder, the model and its optimizer."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from codeparrot_ls.modelfiles import TOKENIZER_FILE
from trainer.cli import LOG_FORMAT
from trainer.pretraining import checkpoint as ckpt
from trainer.pretraining.args import PretrainArguments, UsageError


def setup_logging(is_main: bool) -> logging.Logger:
    # No-op when the host program (or pytest) already configured logging.
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    logging.getLogger("codeparrot").setLevel(logging.INFO if is_main else logging.WARNING)
    for chatty in ("accelerate.accelerator", "accelerate.checkpointing"):  # a line per saved file
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return logging.getLogger("codeparrot.pretrain")


def make_accelerator(args: PretrainArguments, output: Path):
    """The Accelerator, with CPU threads shared out among the processes of one machine."""
    import torch
    from accelerate import Accelerator

    trackers = {"none": None, "all": "all", "wandb": "wandb", "tensorboard": "tensorboard"}[args.report_to]
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, log_with=trackers, project_dir=str(output))
    if accelerator.device.type == "cpu":
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return accelerator


def prepare_output(accelerator, output: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start over a run unless asked to, then clear what this run must not inherit."""
    if not resume and (ckpt.list_checkpoints(output) or (output / ckpt.FINAL).exists()) and not overwrite:
        raise UsageError(f"{output} already holds a run: pass --resume to continue it, "
                         "or --overwrite to start again (its checkpoints are deleted)")
    accelerator.wait_for_everyone()  # every rank has checked before the main process deletes anything
    if accelerator.is_main_process:
        if overwrite and not resume:
            ckpt.remove_run(output)
        output.mkdir(parents=True, exist_ok=True)
        if not resume:  # a best model from an earlier, unfinished run is not this run's
            shutil.rmtree(output / ckpt.BEST, ignore_errors=True)
        ckpt.remove_partial_saves(output)
    accelerator.wait_for_everyone()


def load_model(args: PretrainArguments, resume_dir: Path | None, log: logging.Logger):
    """The GPT2LMHeadModel to train (resumed, initialised from a checkpoint, or new) and the
    sequence length it trains on."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    from trainer.model import build_model

    if resume_dir:
        model = GPT2LMHeadModel.from_pretrained(resume_dir, dtype=torch.float32)
    elif args.init_from:  # trained in fp32 whatever precision the checkpoint was stored in
        model = GPT2LMHeadModel.from_pretrained(args.init_from, dtype=torch.float32)
        log.info("starting from %s", args.init_from)
    else:
        try:
            tokenizer = Tokenizer.from_file(str(Path(args.tokenizer) / TOKENIZER_FILE))
            model = build_model(args.model_size, tokenizer, args.model_config)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    seq_length = args.seq_length or model.config.n_positions
    if seq_length > model.config.n_positions:
        raise UsageError(f"--seq-length {seq_length} exceeds the model's {model.config.n_positions} positions")
    if args.gradient_checkpointing:  # transformers 5 renamed it; keep older versions working
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        log.info("activation checkpointing on")
    return model, seq_length


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


def make_optimizer(model, args: PretrainArguments, device_type: str):
    """AdamW and its cosine schedule with warmup."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    fused = args.fused_optimizer and device_type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), fused=fused or None)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)


def override_learning_rate(scheduler, rate: float) -> None:
    """Continue a restored schedule at its step with `rate` as its peak rate."""
    scheduler.base_lrs = [rate] * len(scheduler.base_lrs)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = rate
    # One step back then the scheduler's own step: it sets every group's rate from the new
    # peak and records it as the last rate, with the step where it was.
    scheduler.last_epoch -= 1
    scheduler.step()


def release_accelerator(accelerator) -> None:
    accelerator.end_training()
    if accelerator.num_processes == 1:
        # Accelerate's state is a process-wide singleton: reset it so that a later in-process
        # call (the quickstart, tests) may choose another precision or accumulation.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
