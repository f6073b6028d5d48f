"""`codeparrot export`: a Hugging Face GPT-2 checkpoint -> one ONNX graph with a KV cache.

The graph (trainer/export/graph.py) serves both the prompt pass (empty past) and
every decode step, so the server runs a single ONNX Runtime session. `logits_to_keep` is an
input: the prompt pass pays the output layer only for the last position, while
perplexity evaluation asks for all positions.

Checked after export: `onnx.checker`, logits parity with PyTorch on a real
prompt (prefill and a decode step with past), equal greedy tokens. A parity
failure removes nothing the user had but exits 1 with the measured difference.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.prompt import END_OF_TEXT, special_token_ids, supports_fim

# Files copied next to the ONNX model so the folder is self-contained.
TOKENIZER_FILES = (mf.TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class ExportError(Exception):
    """A problem with the input (bad checkpoint folder, bad options): exit code 2."""


class ParityError(Exception):
    """The exported graph does not match PyTorch: exit code 1."""


@dataclass
class ExportArgs:
    checkpoint: str = field(metadata={"help": "Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)"})
    output: str = field(metadata={"help": "output folder for model.onnx / model.int8.onnx, tokenizer and export.json"})
    quantize: str = field(default="none", metadata={"help": "'int8': also write model.int8.onnx (dynamic quantization)",
                                                     "choices": ["none", "int8"]})
    optimize: bool = field(default=False, metadata={"help": "save ONNX Runtime's graph optimizations into the file; kept only if faster and at parity"})
    opset: int = field(default=24, metadata={"help": "ONNX opset (at least 24: TensorScatter)"})
    tolerance: float = field(default=1e-3, metadata={"help": "max abs logits difference vs PyTorch (fp32 graph)"})
    eval_file: str = field(default="", metadata={"help": "Python file used for parity and int8 agreement (default: a stdlib module)"})
    eval_tokens: int = field(default=0, metadata={"help": "tokens of eval_file used (default: min(256, n_positions))"})
    keep_fp32: bool = field(default=True, metadata={"help": "keep model.onnx next to model.int8.onnx"})
    threads: int = field(default=0, metadata={"help": "ONNX Runtime threads for the checks (0 = default)"})


def default_eval_text() -> str:
    """A real Python file that ships with every Python: the standard library's pprint module."""
    import sysconfig

    return (Path(sysconfig.get_paths()["stdlib"]) / "pprint.py").read_text(encoding="utf-8")


def check_checkpoint(ckpt: Path) -> dict:
    """Return the checkpoint's config.json, or raise ExportError saying what is wrong."""
    if not ckpt.is_dir():
        raise ExportError(f"checkpoint folder {ckpt} does not exist")
    cfg_path = ckpt / mf.CONFIG_FILE
    if not cfg_path.is_file():
        raise ExportError(f"{ckpt} has no {mf.CONFIG_FILE}: not a Hugging Face checkpoint folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{cfg_path} is not valid JSON: {e}") from e
    if config.get("model_type") != "gpt2":
        archs = config.get("architectures") or config.get("model_type")
        raise ExportError(f"{ckpt}: model type {config.get('model_type')!r} ({archs}) is not supported; "
                          "only GPT-2 checkpoints (model_type 'gpt2') can be exported")
    if not mf.has_torch_checkpoint(ckpt):
        raise ExportError(f"{ckpt} has no weights (*.safetensors or pytorch_model.bin)")
    if not (ckpt / mf.TOKENIZER_FILE).is_file():
        raise ExportError(f"{ckpt} has no {mf.TOKENIZER_FILE}: the exported folder must carry its tokenizer")
    return config


def load_checkpoint(ckpt: Path):
    import torch
    from transformers import GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(ckpt, attn_implementation="eager", dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad folder for the user
        raise ExportError(f"could not load the checkpoint in {ckpt}: {e}") from e
    return model.eval()


def export_onnx(model, path: Path, opset: int) -> float:
    """Write `model`'s graph (trainer/export/graph.py) to `path`; returns seconds taken."""
    import onnx

    from trainer.export.graph import GraphError, build_graph

    t0 = time.perf_counter()
    try:
        proto = build_graph(model, opset)
    except GraphError as e:
        raise ExportError(str(e)) from e
    onnx.save(proto, str(path))
    return time.perf_counter() - t0


def check_args(args: ExportArgs) -> None:
    ckpt, out = Path(args.checkpoint), Path(args.output)
    check_checkpoint(ckpt)
    if args.eval_file and not Path(args.eval_file).is_file():
        raise ExportError(f"--eval_file {args.eval_file} is not a file")
    if args.opset < 24:
        raise ExportError(f"--opset {args.opset}: at least 24 is needed (TensorScatter writes the last layer's cache)")
    if out.resolve() == ckpt.resolve():
        raise ExportError("--output must differ from --checkpoint")


def load_tokenizer(ckpt: Path, model):
    """The checkpoint's tokenizer, refused if it has more tokens than the model has rows."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / mf.TOKENIZER_FILE))
    if tok.get_vocab_size() > model.config.vocab_size:
        raise ExportError(f"tokenizer has {tok.get_vocab_size()} tokens but the model only {model.config.vocab_size} rows")
    return tok


def write_checked_graph(model, path: Path, opset: int, name: str) -> None:
    """The graph (to be published as `name`) written to `path` and accepted by onnx.checker
    (else removed)."""
    import onnx

    secs = export_onnx(model, path, opset)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        path.unlink(missing_ok=True)
        raise ParityError(f"onnx.checker rejected the exported graph: {e}") from e
    print(f"exported {name} in {secs:.1f} s; onnx.checker ok")


def parity_ids(args: ExportArgs, tok, n_positions: int) -> list[int]:
    """The token ids of the text the checks run on (--eval_file, else a stdlib module)."""
    try:
        text = Path(args.eval_file).read_text(encoding="utf-8") if args.eval_file else default_eval_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read --eval_file {args.eval_file}: {e}") from e
    ids = tok.encode(text).ids[:args.eval_tokens or min(256, n_positions)]
    if len(ids) < 8:
        raise ExportError("the parity text is too short (need at least 8 tokens)")
    return ids


def require_parity(model, path: Path, ids: list[int], args: ExportArgs) -> dict:
    """Logits of the graph at `path` against PyTorch's; a graph out of tolerance is removed."""
    from trainer.export import checks

    parity = checks.check_parity(model, path, ids, threads=args.threads)
    print(f"parity vs PyTorch: prefill max |diff| {parity['prefill_max_abs_diff']:.2e}, "
          f"decode step {parity['decode_max_abs_diff']:.2e}, padded batch {parity['padded_max_abs_diff']:.2e}, "
          f"greedy tokens equal {parity['greedy_equal']}")
    worst = max(parity["prefill_max_abs_diff"], parity["decode_max_abs_diff"], parity["padded_max_abs_diff"])
    if worst > args.tolerance or not parity["greedy_equal"]:
        path.unlink(missing_ok=True)
        raise ParityError(f"exported graph differs from PyTorch: max |diff| {worst:.3e} "
                          f"(tolerance {args.tolerance:g}), greedy tokens equal: {parity['greedy_equal']}")
    return parity


def export_info(args: ExportArgs, ckpt: Path, model, tok, parity: dict) -> dict:
    """export.json's contents: what the server needs to run the graph, and its checks."""
    from trainer.export import graph as eg

    config, vocab = model.config, tok.get_vocab(with_added_tokens=True)
    return {
        "format": "codeparrot-onnx-kv",
        "opset": args.opset,
        "source_checkpoint": str(ckpt.resolve()),
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "head_dim": config.n_embd // config.n_head,
        "n_positions": config.n_positions,
        "vocab_size": config.vocab_size,
        "tokenizer_vocab_size": tok.get_vocab_size(),
        "eos_token_id": vocab.get(END_OF_TEXT, config.eos_token_id),
        "special_token_ids": special_token_ids(vocab),
        "supports_fim": supports_fim(vocab),
        "inputs": eg.input_names(config.n_layer),
        "outputs": eg.output_names(config.n_layer),
        # past and present are one buffer per layer, n_positions long (see graph.py)
        "past_shape": ["batch", config.n_head, "capacity", config.n_embd // config.n_head],
        "kv_cache": "shared-buffer",
        "parity": parity,
        "files": {},
    }


def write_variants(args: ExportArgs, out: Path, model, ids: list[int], info: dict) -> None:
    """The optional optimized and int8 graphs beside model.onnx, their checks into `info`."""
    from trainer.export import checks

    fp32_path = out / mf.ONNX_FP32_FILE
    if args.optimize:
        info["optimize"] = checks.try_optimize(fp32_path, model, ids, args.tolerance, threads=args.threads)
        print(f"optimize: {info['optimize']['verdict']}")
    if args.quantize == "int8":
        info["int8"] = q = checks.quantize_int8(fp32_path, out / mf.ONNX_INT8_FILE, ids, model.config.n_positions,
                                                threads=args.threads)
        print(f"int8: {q['size_mb']:.1f} MB (fp32 {q['fp32_size_mb']:.1f} MB), top-1 agreement {q['top1_agreement']:.3f}, "
              f"loss {q['loss_int8']:.4f} vs fp32 {q['loss_fp32']:.4f}")
        if not args.keep_fp32:
            fp32_path.unlink()


def finish_folder(ckpt: Path, out: Path, info: dict) -> None:
    """Tokenizer and config beside the graphs, then export.json last (it marks a finished export)."""
    for name in TOKENIZER_FILES:
        if (ckpt / name).is_file():
            shutil.copy(ckpt / name, out / name)
    shutil.copy(ckpt / mf.CONFIG_FILE, out / mf.CONFIG_FILE)
    for name in (mf.ONNX_FP32_FILE, mf.ONNX_INT8_FILE):
        if (out / name).is_file():
            info["files"][name] = (out / name).stat().st_size
    (out / mf.EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}: {', '.join(sorted(info['files']))}, tokenizer, {mf.CONFIG_FILE}, {mf.EXPORT_INFO_FILE}")


def run(args: ExportArgs) -> dict:
    check_args(args)
    ckpt, out = Path(args.checkpoint), Path(args.output)
    model = load_checkpoint(ckpt)
    tok = load_tokenizer(ckpt, model)
    out.mkdir(parents=True, exist_ok=True)
    tmp_path = out / (mf.ONNX_FP32_FILE + ".tmp")
    write_checked_graph(model, tmp_path, args.opset, mf.ONNX_FP32_FILE)
    ids = parity_ids(args, tok, model.config.n_positions)
    parity = require_parity(model, tmp_path, ids, args)
    tmp_path.replace(out / mf.ONNX_FP32_FILE)
    stale = out / mf.ONNX_INT8_FILE
    if args.quantize != "int8" and stale.is_file():
        # An int8 graph from an earlier export would be served in preference to this one.
        stale.unlink()
        print(f"removed the stale {stale.name} of an earlier export")
    (out / mf.EXPORT_INFO_FILE).unlink(missing_ok=True)  # rewritten last: its presence marks a finished export
    info = export_info(args, ckpt, model, tok, parity)
    write_variants(args, out, model, ids, info)
    finish_folder(ckpt, out, info)
    return info


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import stage_args

    try:
        args = stage_args(ExportArgs, "codeparrot export", argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        run(args)
    except ExportError as e:
        print(f"codeparrot export: error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"codeparrot export: parity check failed: {e}", file=sys.stderr)
        return 1
    return 0

