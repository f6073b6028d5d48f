"""`codeparrot SUBCOMMAND ...`: every pipeline stage as a subcommand.

Each stage module has its own `main(argv)`; this file only dispatches, so
`python -m trainer.corpus ...` and `codeparrot corpus ...` are the same program.
"""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "corpus": ("trainer.corpus", "stream, filter and deduplicate Python source into shards"),
    "tokenizer": ("trainer.tokenizer", "train a byte-level BPE tokenizer for code"),
    "init-model": ("trainer.model", "build a fresh model from a size preset and print its size"),
    "pretrain": ("trainer.pretrain", "pretrain a GPT-2-style model with Accelerate"),
    "finetune": ("trainer.finetune", "adapt a trained model to your own code and show the gain"),
    "evaluate": ("trainer.evaluate", "perplexity, line completion and HumanEval pass@k"),
    "complete": ("trainer.complete", "print completions of a prompt or a file position"),
    "export": ("trainer.export", "export a checkpoint to ONNX with a KV cache (optionally int8)"),
    "quickstart": ("trainer.quickstart", "run the whole chain on the standard library and demo the server"),
}


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stage_logging() -> None:
    """The stages' own progress at INFO; libraries' chatter only when it matters (WARNING).
    A no-op for the format when the host program (or pytest) configured logging already."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    for name in ("codeparrot", "trainer"):
        logging.getLogger(name).setLevel(logging.INFO)


def stage_args(cls, prog: str, argv: list[str] | None, description: str | None = None, check=None):
    """A stage's argument dataclass parsed from `argv` (None: the command line). argparse exits
    as usual: SystemExit 2 on a usage error (an unknown option too, or what `check(args)`
    returns), 0 after --help."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, prog=prog, description=description)
    # HfArgumentParser raises ValueError on options it does not know; argparse's way is a usage error.
    args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    return args


def usage() -> str:
    lines = ["usage: codeparrot SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`codeparrot SUBCOMMAND --help` shows a subcommand's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"codeparrot: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
