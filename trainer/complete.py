"""`codeparrot complete`: print what the model writes after a prompt or at a place in a file.

    codeparrot complete --model runs/tiny --prompt "def fibonacci(n):"
    codeparrot complete --model export/ --file app.py --line 42 --num-samples 3 --temperature 0.4

With `--file`, the cursor is at the end of line `--line` (1-based; default: the end
of the file); with `--fim` (default when the model has FIM tokens and there is
text after the cursor) the rest of the file is given as the FIM suffix. Decoding
stops at codeparrot_ls.prompt.PYTHON_STOP_SEQUENCES, as in the editor, and the
prompt is token-healed as the server does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from codeparrot_ls.engine import GenerationRequest
from codeparrot_ls.prompt import PYTHON_STOP_SEQUENCES, fim_prompt_ids
from trainer.eval_common import ENGINES, ModelFolderError, encode, open_engine, prompt_start


@dataclass
class CompleteArgs:
    model: str = field(metadata={"help": "checkpoint folder (torch) or exported ONNX folder"})
    prompt: str | None = field(default=None, metadata={"help": "text to continue"})
    file: str | None = field(default=None, metadata={"help": "a Python file to complete in"})
    line: int | None = field(default=None, metadata={"help": "with --file: cursor at the end of this line (1-based)"})
    num_samples: int = field(default=1, metadata={"help": "completions to print"})
    temperature: float | None = field(default=None, metadata={
        "help": "0 = greedy (default for one sample); default 0.4 for several samples"})
    top_p: float = field(default=0.95)
    max_new_tokens: int = field(default=128)
    seed: int = field(default=0)
    fim: str = field(default="auto", metadata={"help": "use the text after the cursor as FIM suffix",
                                               "choices": ["auto", "on", "off"]})
    fim_layout: str = field(default="psm", metadata={"choices": ["psm", "spm"]})
    token_healing: bool = field(default=True)
    engine: str = field(default="auto", metadata={"choices": list(ENGINES)})
    precision: str = field(default="auto", metadata={"help": "ONNX: auto (int8 when present), int8 or fp32",
                                                     "choices": ["auto", "int8", "fp32"]})


def split_file(text: str, line: int | None) -> tuple[str, str]:
    """(prefix, suffix) around the cursor at the end of 1-based `line` (None: end of file)."""
    lines = text.split("\n")
    if line is None:
        return text, ""
    if not 1 <= line <= len(lines):
        raise ValueError(f"--line {line} is outside the file (1..{len(lines)})")
    cut = sum(len(x) + 1 for x in lines[:line - 1]) + len(lines[line - 1])
    return text[:cut], text[cut:]


def build_request(engine, prefix: str, suffix: str, args: CompleteArgs) -> GenerationRequest:
    tok = engine.tokenizer
    use_fim = args.fim == "on" or (args.fim == "auto" and suffix.strip() and engine.info.supports_fim)
    if use_fim and not engine.info.supports_fim:
        raise ValueError("--fim on: this model's tokenizer has no FIM tokens")
    prefix_ids, required = encode(tok, prefix), ""
    budget = engine.info.n_positions - args.max_new_tokens
    if budget < 8:
        raise ValueError(f"--max_new_tokens leaves no room for a prompt (n_positions {engine.info.n_positions})")
    if use_fim:
        suffix_ids = encode(tok, suffix)[: budget // 4]
        start = prompt_start(engine)
        prefix_ids = prefix_ids[max(0, len(prefix_ids) - (budget - 3 - len(start) - len(suffix_ids))):]
        ids = start + fim_prompt_ids(prefix_ids, suffix_ids, engine.info.special_ids,
                                                       args.fim_layout)
    else:
        if args.token_healing and prefix_ids:
            from codeparrot_ls.healing import heal

            healed = heal(tok, prefix, prefix_ids)
            prefix_ids, required = healed.prefix_ids, healed.removed_text
        ids = (prompt_start(engine) + prefix_ids)[-budget:]
    temperature = args.temperature if args.temperature is not None else (0.4 if args.num_samples > 1 else 0.0)
    if temperature < 0 or not 0 < args.top_p <= 1 or args.num_samples < 1:
        raise ValueError("need --temperature >= 0, --top_p in (0, 1] and --num_samples >= 1")
    return GenerationRequest(prompt_ids=ids, max_new_tokens=args.max_new_tokens, temperature=temperature,
                             top_p=args.top_p, num_samples=args.num_samples, seed=args.seed,
                             stop=PYTHON_STOP_SEQUENCES, required_prefix=required)


def complete(args: CompleteArgs) -> list[str]:
    if (args.prompt is None) == (args.file is None):
        raise ValueError("give exactly one of --prompt TEXT or --file FILE")
    if args.file is not None:
        prefix, suffix = split_file(Path(args.file).read_text(encoding="utf-8"), args.line)
    else:
        if args.line is not None:
            raise ValueError("--line needs --file")
        prefix, suffix = args.prompt, ""
    engine = open_engine(args.model, args.engine, args.precision)
    try:
        request = build_request(engine, prefix, suffix, args)
        gens = engine.generate(request)
    finally:
        engine.close()
    req = request.required_prefix
    return [g.text[len(req):] if g.text.startswith(req) else g.text for g in gens]


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(CompleteArgs)
    parser.prog = "codeparrot complete"
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        texts = complete(args)
    except (ModelFolderError, ValueError, OSError) as e:
        print(f"codeparrot complete: {e}", file=sys.stderr)
        return 2
    for i, text in enumerate(texts, 1):
        if len(texts) > 1:
            print(f"----- completion {i}/{len(texts)} -----")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
