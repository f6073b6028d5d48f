"""Reading a model folder's metadata: shared by the engines, free of torch and transformers."""

from __future__ import annotations

import json
from pathlib import Path

from codeparrot_ls import modelfiles as mf
from codeparrot_ls.engine.base import ModelInfo
from codeparrot_ls.prompt import END_OF_TEXT, special_token_ids, supports_fim


class ModelLoadError(Exception):
    """A model folder that cannot be served; the message says what is missing or wrong."""


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, not {type(data).__name__} {_short(data)}")
    return data


# The sizes a model folder states, under export.json's and config.json's names, and the largest
# value taken seriously: beyond it a folder is broken, not big (a GPT-2 has 12 layers, 1,024 positions).
SIZES = {
    "n_positions": (("n_positions", "max_position_embeddings"), 1 << 20),
    "n_layer": (("n_layer", "num_hidden_layers"), 1024),
    "n_head": (("n_head", "num_attention_heads"), 1024),
    "n_embd": (("n_embd", "hidden_size"), 1 << 16),
    "head_dim": (("head_dim",), 1 << 12),
    "vocab_size": (("vocab_size",), 1 << 22),
}


def model_sizes(model_dir: Path) -> dict[str, int]:
    """The sizes export.json and config.json give (whichever are present), checked: whole
    numbers in range, the same in both files, heads x head size = width. Raises ModelLoadError."""
    sources = [(f, read_json(model_dir / f)) for f in (mf.EXPORT_INFO_FILE, mf.CONFIG_FILE)
               if (model_dir / f).is_file()]
    sizes: dict[str, tuple[int, str]] = {}
    for name, (keys, high) in SIZES.items():
        for fname, data in sources:
            for key in keys:
                value = data.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                    raise ModelLoadError(f"{model_dir / fname}: {key} must be a whole number from 1 to {high}, "
                                         f"not {_short(value)}")
                if name in sizes and sizes[name][0] != value:
                    raise ModelLoadError(f"{model_dir}: {fname} gives {key} {value} but {sizes[name][1]} gives "
                                         f"{sizes[name][0]}: the files are from different models")
                sizes.setdefault(name, (value, f"{fname}"))
    out = {name: v for name, (v, _) in sizes.items()}
    if {"n_head", "head_dim", "n_embd"} <= out.keys() and out["n_head"] * out["head_dim"] != out["n_embd"]:
        raise ModelLoadError(f"{model_dir}: n_head {out['n_head']} x head_dim {out['head_dim']} is not "
                             f"n_embd {out['n_embd']}")
    for fname, data in sources:
        inputs = data.get("inputs")
        if inputs is not None and not (isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)):
            raise ModelLoadError(f"{model_dir / fname}: inputs must be a list of names, not {_short(inputs)}")
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = model_dir / mf.TOKENIZER_FILE
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no {mf.TOKENIZER_FILE}; the model folder must carry its tokenizer")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
        raise ModelLoadError(f"{path} is not a valid tokenizer file: {e}") from e


def model_info(model_dir: Path, engine: str, tokenizer, **extra) -> ModelInfo:
    """ModelInfo from export.json (ONNX folders) or config.json (both kinds) and the tokenizer."""
    sizes = model_sizes(model_dir)
    export = read_json(model_dir / mf.EXPORT_INFO_FILE) if (model_dir / mf.EXPORT_INFO_FILE).is_file() else {}
    config = read_json(model_dir / mf.CONFIG_FILE) if (model_dir / mf.CONFIG_FILE).is_file() else {}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if sizes.get("vocab_size", len(vocab)) < len(vocab):
        raise ModelLoadError(f"{model_dir}: the tokenizer has {len(vocab)} tokens but the model only "
                             f"{sizes['vocab_size']} (vocab_size): they do not belong together")

    def pick(*keys, default=None):
        for source in (export, config):
            for k in keys:
                if source.get(k) is not None:
                    return source[k]
        if default is None:
            raise ModelLoadError(f"{model_dir}: neither {mf.EXPORT_INFO_FILE} nor {mf.CONFIG_FILE} gives {keys[0]}")
        return default

    eos = vocab.get(END_OF_TEXT)
    if eos is None:
        eos = pick("eos_token_id")
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < len(vocab):
            raise ModelLoadError(f"{model_dir}: eos_token_id must be a token of the tokenizer, not {_short(eos)}")
    return ModelInfo(
        name=model_dir.resolve().name,
        engine=engine,
        vocab_size=sizes.get("vocab_size", tokenizer.get_vocab_size()),
        n_positions=sizes.get("n_positions") or pick("n_positions", "max_position_embeddings"),
        n_layer=sizes.get("n_layer") or pick("n_layer", "num_hidden_layers"),
        eos_id=int(eos),
        special_ids=special_token_ids(vocab),
        supports_fim=supports_fim(vocab),
        path=str(model_dir.resolve()),
        fim_default=(export.get("serving") or {}).get("fim") is not False,   # absent or null: FIM
        extra=extra,
    )
