"""`codeparrot quickstart`: a model of your code, measured and served, in one command.

By default it fine-tunes the shipped model on --source (`codeparrot finetune`: your files
split into train and held-out, training for --minutes, ONNX int8 export, a before/after
table on the held-out files). With no --source it fine-tunes on this project's own
Python source, which is on every machine that runs it and in no training set.

--from-scratch runs the whole chain on this machine's standard library instead:
corpus -> tokenizer -> pretrain (for --minutes) -> export (ONNX int8) -> evaluate.

Either way it ends with a demonstration: the real language server, started as editors
start it, answers an inline completion for a sample file.

Every stage writes into its own folder under --output and is skipped when its
result is already there, so running the command again is fast; a pretraining
run that was interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.cli import stage_args, stage_logging

log = logging.getLogger("codeparrot.quickstart")

# The demonstration file: the cursor goes at the end of DEMO_PREFIX.
DEMO_PREFIX = '''import os


def list_python_files(root):
    """Return the paths of the Python files under root."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".py"):
                '''
DEMO_SUFFIX = '''
    return paths
'''


@dataclass
class QuickstartArguments:
    output: str = field(default="runs/quickstart", metadata={"help": "folder for every stage's result"})
    source: list[str] = field(default_factory=list, metadata={
        "help": "your code (folders, .jsonl[.gz]; with --from-scratch also hf:NAME); default: this project's "
                "source (fine-tuning) or this Python's standard library (--from-scratch)"})
    from_scratch: bool = field(default=False, metadata={
        "help": "train a new tokenizer and model from scratch instead of fine-tuning the shipped model"})
    init_from: str = field(default="default", metadata={"help": "fine-tuning: the checkpoint to start from"})
    minutes: float | None = field(default=None, metadata={
        "help": "training time (default: 10 to fine-tune, 8 from scratch; the other stages take minutes more)"})
    vocab_size: int = field(default=16384, metadata={"help": "tokenizer vocabulary size"})
    model_size: str = field(default="tiny", metadata={"help": "model size preset (see `codeparrot init-model`)"})
    eval_positions: int = field(default=200, metadata={"help": "line-completion positions scored on the valid split"})
    demo: bool = field(default=True, metadata={"help": "finish with a completion from the real server"})


def _stage(number: int, name: str, done: bool) -> None:
    state = "already done, skipped" if done else "running"
    print(f"\n[{number}/6] {name}: {state}", flush=True)


def _run(module_main, argv: list[str], what: str) -> None:
    print("  $ codeparrot " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = module_main(argv[1:])
    if code:
        raise SystemExit(f"quickstart: the {what} stage failed (exit code {code}); see the messages above")


def own_source() -> list[str]:
    """This project's Python packages: present wherever the quickstart runs, in no training set."""
    import codeparrot_ls
    import trainer

    return [str(Path(codeparrot_ls.__file__).parent), str(Path(trainer.__file__).parent)]


def run_finetune(args: QuickstartArguments) -> int:
    from trainer import finetune

    sources = args.source or own_source()
    argv = ["--output", args.output, "--init-from", args.init_from, "--minutes", str(args.minutes),
            "--positions", str(args.eval_positions), *(a for s in sources for a in ("--source", s))]
    print("  $ codeparrot finetune " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = finetune.main(argv)
    if code:
        return code
    model = Path(args.output).resolve() / "model"
    if args.demo:
        print("\n[demonstration] the language server completes a sample file with the fine-tuned model", flush=True)
        demo(model)
    print(f"\nYour model: {model}")
    print(f"  Neovim:     require('codeparrot').setup({{ model = {json.dumps(str(model))} }})")
    print(f"  VS Code:    set \"codeparrot.model\": {json.dumps(str(model))} in settings.json")
    return 0


def run(args: QuickstartArguments) -> int:
    if not args.from_scratch:
        return run_finetune(args)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus, tokenizer, train = out / "corpus", out / "tokenizer", out / "train"
    model, evaluation = out / "model", out / "eval"
    started = time.monotonic()

    done = (corpus / "stats.json").is_file()
    _stage(1, "corpus", done)
    if not done:
        from trainer import corpus as stage
        sources = [a for s in args.source for a in ("--source", s)]
        _run(stage.main, ["corpus", "--output", str(corpus), "--overwrite", *sources], "corpus")

    done = (tokenizer / "report.json").is_file()
    _stage(2, "tokenizer", done)
    if not done:
        from trainer import tokenizer as stage
        _run(stage.main, ["tokenizer", "--corpus", str(corpus), "--vocab-size", str(args.vocab_size),
                          "--output", str(tokenizer)], "tokenizer")

    final = train / "final"
    done = (final / "config.json").is_file()
    _stage(3, f"pretrain ({args.minutes:g} minutes)", done)
    if not done:
        from trainer import pretrain as stage
        argv = ["pretrain", "--corpus", str(corpus), "--tokenizer", str(tokenizer), "--output", str(train),
                "--model-size", args.model_size, "--max-minutes", str(args.minutes),
                "--max-steps", str(_steps_for(args.minutes)), "--warmup-steps", "50",
                "--learning-rate", "1e-3", "--eval-steps", "100", "--save-steps", "100"]
        if (train / "latest").exists():
            argv += ["--resume", "latest"]
        _run(stage.main, argv, "pretrain")

    done = (model / "export.json").is_file()
    _stage(4, "export to ONNX (int8)", done)
    if not done:
        from trainer import export as stage
        _run(stage.main, ["export", "--checkpoint", str(final), "--output", str(model), "--quantize", "int8"], "export")

    results = evaluation / "line-completion.json"
    done = results.is_file() and (evaluation / "perplexity.json").is_file()
    _stage(5, "evaluate the exported model (perplexity and line completion on the valid split)", done)
    if not done:
        from trainer import evaluate as stage
        evaluation.mkdir(exist_ok=True)
        _run(stage.main, ["evaluate", "--model", str(model), "--task", "perplexity", "--data", str(corpus),
                          "--output", str(evaluation / "perplexity.json")], "evaluate")
        # Random cursors, and FIM in the server's layout: the comparison that decides how the
        # server prompts this model.
        _run(stage.main, ["evaluate", "--model", str(model), "--task", "line-completion", "--data", str(corpus),
                          "--positions", str(args.eval_positions), "--cursor", "random", "--fim", "both",
                          "--fim-layout", "spm", "--output", str(results)], "evaluate")
    choice = record_fim_choice(model, results)
    if choice:
        print(f"  serving prompt: {choice}")

    if args.demo:
        _stage(6, "demonstration: the language server completes a sample file", False)
        demo(model)
    else:
        print("\n[6/6] demonstration: off (--demo false)")

    print(f"\nquickstart finished in {(time.monotonic() - started) / 60:.1f} minutes.")
    print(f"\nYour model: {model}")
    print(f"  serve it:   codeparrot-ls --model {shlex.quote(str(model))}")
    print(f"  Neovim:     require('codeparrot').setup({{ model = {json.dumps(str(model))} }})")
    print(f"  VS Code:    set \"codeparrot.model\": {json.dumps(str(model))} in settings.json")
    print(f"  evaluation: {evaluation}")
    return 0


def record_fim_choice(model: Path, line_completion_json: Path) -> str:
    """Write into the model's export.json whether the server should prompt it with FIM
    (`"serving": {"fim": ...}`): FIM only where it scored at least as well as left to right.
    Returns a one-line summary ("" when the results have no FIM run)."""
    results = json.loads(line_completion_json.read_text(encoding="utf-8"))["results"]
    fim = next((v for k, v in results.items() if k.startswith("fim_")), None)
    plain = results.get("no_fim")
    if fim is None or plain is None:
        return ""
    use_fim = fim["edit_similarity"] >= plain["edit_similarity"]
    info_path = model / "export.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["serving"] = {"fim": use_fim, "chosen_by": "line completion, edit similarity",
                       "edit_similarity": {"fim": fim["edit_similarity"], "no_fim": plain["edit_similarity"]}}
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return (f"{'fill-in-the-middle' if use_fim else 'left to right'} (line completion edit similarity: "
            f"FIM {fim['edit_similarity']:.1f}, left to right {plain['edit_similarity']:.1f})")


def _steps_for(minutes: float) -> int:
    # Length of the cosine schedule. The tiny preset does about 1.78 steps/s (batch 8 x 512,
    # bf16, chunked loss; evaluations and saves included: 840 steps in 7 min 51 s) on a quiet 2-core CPU, so the learning
    # rate has decayed when --max-minutes stops it; on a slower machine the time limit stops it first.
    return max(100, int(minutes * 60 * 1.75))   # a little under the measured rate


def demo(model_dir: Path | None, timeout: float = 60.0) -> dict:
    """Start `codeparrot-ls --model MODEL` over stdio, open a file, ask for an inline completion.

    With `model_dir` None the server is started with no model at all (it serves the
    default model shipped in the package). Returns the served model's folder and the
    suggestion.
    """
    return asyncio.run(_demo(model_dir, timeout))


async def _demo(model_dir: Path | None, timeout: float) -> dict:
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("codeparrot-quickstart", "1")
    ready = asyncio.get_running_loop().create_future()

    @client.feature("$/codeparrot/status")
    def on_status(params):
        state = getattr(params, "state", None) or (params.get("state") if isinstance(params, dict) else None)
        if state in ("ready", "error") and not ready.done():
            ready.set_result(params)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def on_log(params):
        log.debug("server: %s", params.message)

    server = shutil.which("codeparrot-ls")
    cmd = [server] if server else [sys.executable, "-m", "codeparrot_ls.cli"]
    await client.start_io(*cmd, *(["--model", str(model_dir)] if model_dir else []))
    try:
        await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                             process_id=None, root_uri=None))
        client.initialized(types.InitializedParams())
        status = await asyncio.wait_for(ready, timeout)
        state = getattr(status, "state", None) or status.get("state")
        if state != "ready":
            message = getattr(status, "message", None) or status.get("message")
            raise SystemExit(f"quickstart: the server could not load {model_dir}: {message}")
        uri = "file:///quickstart/demo.py"
        text = DEMO_PREFIX + DEMO_SUFFIX
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        lines = DEMO_PREFIX.split("\n")
        position = types.Position(line=len(lines) - 1, character=len(lines[-1]))
        started = time.perf_counter()
        result = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))), timeout)
        elapsed_ms = (time.perf_counter() - started) * 1000
        items = result.items if hasattr(result, "items") else (result or [])
        suggestion = items[0].insert_text if items else ""
        if not isinstance(suggestion, str):
            suggestion = suggestion.value
        print("  the prompt (cursor at ▌):\n")
        print("\n".join("    " + line for line in DEMO_PREFIX.split("\n")[-6:]) + "▌")
        if items:
            print(f"\n  the server suggested ({len(items)} candidate(s), {elapsed_ms:.0f} ms):\n")
            print("\n".join("    " + line for line in (lines[-1] + suggestion).split("\n")))
        else:
            print(f"\n  the server answered in {elapsed_ms:.0f} ms with no suggestion: every candidate was "
                  "dropped by the post-processing rules (a model trained for longer suggests more)")
        await client.shutdown_async(None)
        client.exit(None)
        served = getattr(status, "model", None) or status.get("model")
        return {"model": served, "suggestion": suggestion, "ms": elapsed_ms}
    finally:
        await client.stop()


def main(argv: list[str] | None = None) -> int:
    stage_logging()
    args = stage_args(QuickstartArguments, "codeparrot quickstart", argv,
                      "the whole chain, from source files to a served model", check=_check_minutes)
    return run(args)


def _check_minutes(args: QuickstartArguments) -> str | None:
    if args.minutes is None:
        args.minutes = 8.0 if args.from_scratch else 10.0
    return "--minutes must be positive" if args.minutes <= 0 else None


if __name__ == "__main__":
    sys.exit(main())
