"""Checkpoints of a pretraining run: atomic, self-describing, easy to find.

Layout of a run's output folder:

    OUTPUT/
      checkpoints/step-00000500/    a Hugging Face folder: config.json, model.safetensors,
                                    generation_config.json, tokenizer files, plus
                                    trainer_state.json (step, data position, counters) and
                                    accelerate_state/ (optimizer, scheduler, RNG of every rank)
      checkpoints/.tmp-step-…/      a save in progress (never loaded; removed on the next start)
      latest                        the name of the newest complete checkpoint
      final/                        the model of the last finished run (HF files only):
                                    what `evaluate`, `export` and the server consume
      metrics.jsonl  pretrain/      metrics (one JSON object per line) and TensorBoard logs

A checkpoint is written into a temporary folder and renamed into place, so a
kill in the middle of a save never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from codeparrot_ls.modelfiles import (CONFIG_FILE, EXPORT_INFO_FILE, TOKENIZER_FILE, has_onnx_model,
                                      has_torch_checkpoint)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FINAL = "final"
STATE_FILE = "trainer_state.json"
ACCELERATE_STATE = "accelerate_state"
TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (not path.name.startswith(TMP_PREFIX) and (path / STATE_FILE).is_file()
            and (path / "model.safetensors").is_file() and (path / ACCELERATE_STATE).is_dir())


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if is_complete(p))


def latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one if the pointer is stale."""
    pointer = Path(output) / LATEST
    if pointer.is_file():
        candidate = Path(output) / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
        if is_complete(candidate):
            return candidate
    found = list_checkpoints(output)
    return found[-1] if found else None


def resolve_resume(output: Path, resume: str) -> Path:
    """`latest` (the newest complete checkpoint in OUTPUT) or a checkpoint path."""
    if resume == "latest":
        found = latest_checkpoint(output)
        if found is None:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint in {Path(output) / CHECKPOINTS}")
        return found
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint "
                                f"(needs {STATE_FILE}, model.safetensors and {ACCELERATE_STATE}/)")
    return path


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_partial_saves(output: Path) -> None:
    root = Path(output) / CHECKPOINTS
    for tmp in root.glob(TMP_PREFIX + "*") if root.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_run(output: Path) -> None:
    """Delete what a previous run left in OUTPUT (checkpoints, final model, pointer, metrics)."""
    output = Path(output)
    for name in (CHECKPOINTS, FINAL, "best"):
        shutil.rmtree(output / name, ignore_errors=True)
    for name in (LATEST, "metrics.jsonl"):
        (output / name).unlink(missing_ok=True)


# Files of a checkpoint folder that are not the tokenizer's: never copied as tokenizer files
# (with --init-from the tokenizer folder is a checkpoint).
NOT_TOKENIZER = frozenset({"config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
                           STATE_FILE, "best.json"})


def copy_tokenizer_files(tokenizer_dir: Path, dest: Path) -> None:
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and f.name not in NOT_TOKENIZER and not (dest / f.name).exists():
            shutil.copy(f, dest / f.name)


def save_checkpoint(accelerator, model, tokenizer_dir: Path, output: Path, state: dict, keep_last: int,
                    before_rename: Callable[[], None] | None = None) -> Path:
    """Save model + tokenizer + trainer state + accelerate state for `state["step"]`.

    Every rank must call this (each saves its own RNG state). The output folder
    must be shared by all ranks (one machine, or a shared filesystem across nodes).
    """
    root = Path(output) / CHECKPOINTS
    name = checkpoint_name(state["step"])
    final, tmp = root / name, root / (TMP_PREFIX + name)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / ACCELERATE_STATE))
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer_files(tokenizer_dir, tmp)
        if before_rename is not None:
            before_rename()
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_atomic(Path(output) / LATEST, name + "\n")
        prune(output, keep_last)
    accelerator.wait_for_everyone()
    return final


def prune(output: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never the `latest` one)."""
    if keep_last <= 0:
        return
    keep = latest_checkpoint(output)
    for path in list_checkpoints(output)[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def publish_final(output: Path, checkpoint: Path) -> Path:
    """Copy a checkpoint's model and tokenizer files to OUTPUT/final (atomically replaced)."""
    output = Path(output)
    tmp, final, old = output / (TMP_PREFIX + FINAL), output / FINAL, output / (TMP_PREFIX + FINAL + "-old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(ACCELERATE_STATE))
    replace_folder(tmp, final, old)
    return final


def replace_folder(tmp: Path, dest: Path, old: Path) -> None:
    """Put the complete folder `tmp` at `dest` by renames, so `dest` is never half-written."""
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


# --- starting from a trained model (`--init-from`) and keeping the best one (`--keep-best`) ---

BEST = "best"
BEST_FILE = "best.json"


def default_checkpoint() -> Path:
    """The shipped default model's training checkpoint (kept next to its ONNX export)."""
    from codeparrot_ls.status import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR / "checkpoint"


def resolve_init(spec: str) -> Path:
    """`default`, a checkpoint folder, or a pretrain run folder (its final/): the folder to load.

    Raises FileNotFoundError / ValueError with a message that says what to pass instead.
    """
    if spec == "default":
        path = default_checkpoint()
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"--init-from default: the default model's training checkpoint is not in "
                                    f"{path} (this installation has only its ONNX export); pass a checkpoint folder")
    else:
        path = Path(spec).expanduser()
        if path.is_dir() and not (path / CONFIG_FILE).is_file() and (path / FINAL / CONFIG_FILE).is_file():
            path = path / FINAL  # a pretrain run folder
    if not path.is_dir():
        raise FileNotFoundError(f"--init-from {spec}: no such folder")
    has_weights = has_torch_checkpoint(path)
    if not has_weights and (has_onnx_model(path) or (path / EXPORT_INFO_FILE).is_file()):
        raise ValueError(f"--init-from {spec}: an exported ONNX folder cannot be trained; pass the training "
                         "checkpoint it was exported from (a folder with config.json and model.safetensors)")
    if not ((path / CONFIG_FILE).is_file() and has_weights):
        raise ValueError(f"--init-from {spec}: not a checkpoint folder (needs config.json and model.safetensors)")
    if not (path / TOKENIZER_FILE).is_file():
        raise ValueError(f"--init-from {spec}: no {TOKENIZER_FILE} next to the weights")
    return path


def check_init(path: Path, tokenizer_dir: Path | None = None) -> None:
    """The checkpoint at `path` fits its own tokenizer, and `tokenizer_dir` (if given) is that tokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--init-from {path}: unreadable config.json ({exc})") from exc
    if config.model_type != "gpt2":
        raise ValueError(f"--init-from {path}: a {config.model_type!r} model; this trainer trains GPT-2 models")
    own = Tokenizer.from_file(str(path / TOKENIZER_FILE)).get_vocab()
    if len(own) > config.vocab_size:
        raise ValueError(f"--init-from {path}: its tokenizer has {len(own)} tokens but the model only "
                         f"{config.vocab_size} embeddings: they do not belong together")
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != path.resolve():
        given = Tokenizer.from_file(str(Path(tokenizer_dir) / TOKENIZER_FILE)).get_vocab()
        if given != own:
            raise ValueError(f"--tokenizer {tokenizer_dir} is not the tokenizer of --init-from {path}: "
                             "a model keeps the tokenizer it was trained with (leave --tokenizer out)")


def best_loss(output: Path) -> float | None:
    """The eval loss of OUTPUT/best, or None when there is none."""
    return read_best(output)["eval_loss"] if (Path(output) / BEST / BEST_FILE).is_file() else None


def save_best(model, tokenizer_dir: Path, output: Path, info: dict) -> Path:
    """Replace OUTPUT/best (HF files + best.json) atomically with `model` (main process only)."""
    output = Path(output)
    tmp, best, old = output / (TMP_PREFIX + BEST), output / BEST, output / (TMP_PREFIX + BEST + "-old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, tmp)
    (tmp / BEST_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    replace_folder(tmp, best, old)
    return best


def read_best(output: Path) -> dict:
    return json.loads((Path(output) / BEST / BEST_FILE).read_text(encoding="utf-8"))
