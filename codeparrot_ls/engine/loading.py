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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


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
    export = read_json(model_dir / mf.EXPORT_INFO_FILE) if (model_dir / mf.EXPORT_INFO_FILE).is_file() else {}
    config = read_json(model_dir / mf.CONFIG_FILE) if (model_dir / mf.CONFIG_FILE).is_file() else {}
    vocab = tokenizer.get_vocab(with_added_tokens=True)

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
    return ModelInfo(
        name=model_dir.resolve().name,
        engine=engine,
        vocab_size=int(pick("vocab_size", default=tokenizer.get_vocab_size())),
        n_positions=int(pick("n_positions", "max_position_embeddings")),
        n_layer=int(pick("n_layer", "num_hidden_layers")),
        eos_id=int(eos),
        special_ids=special_token_ids(vocab),
        supports_fim=supports_fim(vocab),
        path=str(model_dir.resolve()),
        fim_default=(export.get("serving") or {}).get("fim") is not False,   # absent or null: FIM
        extra=extra,
    )
