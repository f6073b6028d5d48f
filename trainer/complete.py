"""`codeparrot complete`: print what the model writes after a prompt or at a place in a file.

    codeparrot complete --model runs/tiny --prompt "def fibonacci(n):"
    codeparrot complete --model export/ --file app.py --line 42 --num-samples 3 --temperature 0.4

With `--file`, the cursor is at the end of line `--line` (1-based; default: the end
of the file). The prompt comes from the language server's builder
(codeparrot_ls.prompt_builder): `--fim auto` lets it choose per request as the server
does (FIM where code follows the cursor, unless the model's export.json prefers left to
right), `on` / `off` force it. Decoding stops at codeparrot_ls.prompt.PYTHON_STOP_SEQUENCES,
as in the editor, and the prompt is token-healed as the server does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from codeparrot_ls.engine import Decoder, GenerationRequest
from codeparrot_ls.modelfiles import ENGINES
from codeparrot_ls.prompt import PYTHON_STOP_SEQUENCES
from codeparrot_ls.prompt_builder import SERVED_LAYOUT, PromptBuilder
from trainer.evaluate.common import ModelFolderError, open_engine


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
    fim: str = field(default="auto", metadata={"help": "FIM with the text after the cursor as suffix: "
                                               "auto = the server's per-request choice",
                                               "choices": ["auto", "on", "off"]})
    fim_layout: str = field(default=SERVED_LAYOUT, metadata={"choices": ["psm", "spm"]})
    token_healing: bool = field(default=True)
    engine: str = field(default="auto", metadata={"choices": list(ENGINES)})
    precision: str = field(default="auto", metadata={"help": "ONNX: auto (int8 when present), int8 or fp32",
                                                     "choices": ["auto", "int8", "fp32"]})


def cursor_at_line_end(text: str, line: int | None) -> int:
    """Offset of the cursor at the end of 1-based `line` (None: end of file)."""
    lines = text.split("\n")
    if line is None:
        return len(text)
    if not 1 <= line <= len(lines):
        raise ValueError(f"--line {line} is outside the file (1..{len(lines)})")
    return sum(len(x) + 1 for x in lines[:line - 1]) + len(lines[line - 1])


def build_request(engine, text: str, offset: int, args: CompleteArgs) -> GenerationRequest:
    from codeparrot_ls.settings import CompletionSettings

    if args.fim == "on" and not engine.info.supports_fim:
        raise ValueError("--fim on: this model's tokenizer has no FIM tokens")
    settings = CompletionSettings(max_new_tokens=args.max_new_tokens, token_healing=args.token_healing,
                                  fim={"auto": None, "on": True, "off": False}[args.fim])
    prompt = PromptBuilder.for_engine(engine, args.fim_layout).build(text, offset, settings)
    temperature = args.temperature if args.temperature is not None else (0.4 if args.num_samples > 1 else 0.0)
    if temperature < 0 or not 0 < args.top_p <= 1 or args.num_samples < 1:
        raise ValueError("need --temperature >= 0, --top_p in (0, 1] and --num_samples >= 1")
    return GenerationRequest(prompt_ids=prompt.ids, max_new_tokens=args.max_new_tokens + prompt.n_healed,
                             temperature=temperature, top_p=args.top_p, num_samples=args.num_samples,
                             seed=args.seed, stop=PYTHON_STOP_SEQUENCES, required_prefix=prompt.required_prefix)


def complete(args: CompleteArgs) -> list[str]:
    if (args.prompt is None) == (args.file is None):
        raise ValueError("give exactly one of --prompt TEXT or --file FILE")
    if args.file is not None:
        text = Path(args.file).read_text(encoding="utf-8")
        offset = cursor_at_line_end(text, args.line)
    else:
        if args.line is not None:
            raise ValueError("--line needs --file")
        text = args.prompt
        offset = len(text)
    engine = open_engine(args.model, args.engine, args.precision)
    try:
        request = build_request(engine, text, offset, args)
        gens = Decoder(engine).generate(request)
    finally:
        engine.close()
    req = request.required_prefix
    return [g.text[len(req):] if g.text.startswith(req) else g.text for g in gens]


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import stage_args

    try:
        args = stage_args(CompleteArgs, "codeparrot complete", argv)
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
