"""Arguments of `codeparrot pretrain`: a dataclass for HfArgumentParser, config files, checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from codeparrot_ls.modelfiles import TOKENIZER_FILE

MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "wandb", "all", "none")


@dataclass
class PretrainArguments:
    corpus: str | None = field(default=None, metadata={"help": "folder of train-*/valid-*.jsonl.gz shards"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder (tokenizer.json)"})
    output: str | None = field(default=None, metadata={"help": "run folder: checkpoints, final/, metrics"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this checkpoint's weights (`default`: the shipped model's; a checkpoint or run folder); "
                "its tokenizer and shape are kept, --model-size is ignored"})
    keep_best: bool = field(default=False, metadata={
        "help": "final/ is the checkpoint with the lowest eval loss, the starting point included"})
    model_size: str = field(default="tiny", metadata={"help": "size preset: test, tiny, mini, small, xl"})
    model_config: str | None = field(default=None, metadata={"help": "JSON/YAML GPT2Config fields over the preset"})
    seq_length: int | None = field(default=None, metadata={"help": "tokens per sequence (default: model positions)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per process per micro-step"})
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    warmup_steps: int = 100
    max_steps: int = 1000
    max_minutes: float | None = field(default=None, metadata={"help": "stop (and save) after this long"})
    eval_steps: int = field(default=200, metadata={"help": "evaluate every N steps (and at the end); 0: never"})
    eval_batches: int = field(default=20, metadata={"help": "valid batches per process per evaluation; 0: all"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_last: int = field(default=3, metadata={"help": "complete checkpoints to keep; 0: all"})
    logging_steps: int = 10
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    fim_mode: str = field(default="context", metadata={
        "help": "context: FIM examples cut from each packed window (fit the context); document: whole files, "
                "before packing"})
    quality_tokens: bool = field(default=False, metadata={"help": "a quality token at each document start"})
    shuffle_buffer: int = field(default=256, metadata={"help": "sequences in the shuffle buffer; 0: off"})
    dataloader_workers: int = field(default=1, metadata={"help": "tokenizing processes per rank; 0: inline"})
    mixed_precision: str = field(default="bf16", metadata={"help": "no, bf16 (CPU or GPU) or fp16 (GPU)"})
    gradient_checkpointing: bool = False
    fused_optimizer: bool = field(default=True, metadata={"help": "fused AdamW kernel where supported"})
    loss_chunk_size: int = field(default=256, metadata={
        "help": "tokens per block of the fused output-layer + cross-entropy; 0: transformers' loss"})
    torch_compile: bool = field(default=False, metadata={
        "help": "torch.compile the transformer blocks (no gain over the chunked loss on CPU; compiles for ~20 s)"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads per process"})
    resume: str | None = field(default=None, metadata={"help": "`latest` (or no value) or a checkpoint path"})
    overwrite: bool = field(default=False, metadata={"help": "start again in an OUTPUT that holds a run"})
    seed: int = 0
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none"})
    max_nonfinite: int = field(default=5, metadata={"help": "stop after this many non-finite steps in a row"})
    # Fault injection, for the tests of the guards and of resume.
    fault_nan_loss_steps: str = field(default="", metadata={"help": "testing: poison the loss at these steps"})
    fault_kill_at_step: int | None = field(default=None, metadata={"help": "testing: SIGKILL after this step"})
    fault_kill_in_save: int | None = field(default=None, metadata={"help": "testing: SIGKILL mid-save at step"})


class UsageError(ValueError):
    """Bad arguments: reported in one line, exit status 2."""


def parse_args(argv: list[str]) -> PretrainArguments:
    from transformers import HfArgumentParser

    argv = list(argv)
    # `--resume` alone means the latest checkpoint.
    for i, a in enumerate(argv):
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, "latest")
    parser = HfArgumentParser(PretrainArguments)
    parser.add_argument("--config", default=None, help="JSON or YAML file of these arguments; flags override it")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(known.config))
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)[:1]
    except ValueError as exc:  # unknown flags
        raise UsageError(str(exc)) from exc
    return args


def read_config(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of argument names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = set(values) - {f.name for f in fields(PretrainArguments)}
    if unknown:
        raise UsageError(f"{path}: unknown arguments {sorted(unknown)}")
    return values


def check_args(args: PretrainArguments) -> None:
    if args.init_from:
        from trainer.pretraining.checkpoint import check_init, resolve_init

        try:
            init = resolve_init(args.init_from)
            if args.tokenizer and not (Path(args.tokenizer) / TOKENIZER_FILE).is_file():
                raise ValueError(f"--tokenizer {args.tokenizer}: no {TOKENIZER_FILE} there")
            check_init(init, Path(args.tokenizer) if args.tokenizer else None)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        args.init_from, args.tokenizer = str(init), str(init)  # the model keeps its own tokenizer
    if args.keep_best and not args.eval_steps:
        raise UsageError("--keep-best needs evaluations (--eval-steps above 0)")
    for name in ("corpus", "tokenizer", "output"):
        if not getattr(args, name):
            raise UsageError(f"--{name} is required")
    if not (Path(args.tokenizer) / TOKENIZER_FILE).is_file():
        raise UsageError(f"--tokenizer {args.tokenizer}: no {TOKENIZER_FILE} there")
    if not Path(args.corpus).is_dir():
        raise UsageError(f"--corpus {args.corpus}: not a folder")
    if args.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision must be one of {MIXED_PRECISION}")
    if args.report_to not in REPORT_TO:
        raise UsageError(f"--report-to must be one of {REPORT_TO}")
    if args.report_to in ("wandb", "all"):
        import importlib.util

        if args.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
            raise UsageError("--report-to wandb: the wandb package is not installed (pip install wandb)")
    for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "logging_steps", "save_steps",
                 "max_nonfinite"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.loss_chunk_size < 0:
        raise UsageError("--loss-chunk-size must be at least 0")
    if not (0 <= args.fim_rate <= 1 and 0 <= args.fim_spm_rate <= 1):
        raise UsageError("--fim-rate and --fim-spm-rate must be in [0, 1]")
    if args.fim_mode not in ("context", "document"):
        raise UsageError("--fim-mode must be context or document")
