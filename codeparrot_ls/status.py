"""Where the model comes from, and its state: loading, ready or error.

The model folder is resolved in this order: `--model`, the environment variable
`CODEPARROT_LS_MODEL`, `initializationOptions.model`, then the default model
packaged in `codeparrot_ls/models/default` (when the package ships one).

Loading happens on a background thread so the server answers `initialize` at
once; requests that arrive before the model is ready get an empty answer. Each
state change is reported to the editor as a `$/codeparrot/status` notification.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeparrot_ls import modelfiles

log = logging.getLogger(__name__)

ENV_MODEL = "CODEPARROT_LS_MODEL"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

LOADING, READY, ERROR = "loading", "ready", "error"


def default_model_dir() -> Path | None:
    """The packaged default model, when this install ships one."""
    d = DEFAULT_MODEL_DIR
    return d if (d / modelfiles.TOKENIZER_FILE).is_file() else None


def startup_model(cli_model: str | None, environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The model folder known before the editor connects, and where it came from."""
    environ = os.environ if environ is None else environ
    if cli_model:
        return cli_model, "--model"
    if environ.get(ENV_MODEL):
        return environ[ENV_MODEL], ENV_MODEL
    return None, ""


def model_problem(model_dir: str | Path, engine: str = "auto") -> str | None:
    """Why `model_dir` cannot serve with `engine`, or None when it looks complete.

    Checks what can be checked without loading the weights: the folder, the
    files the chosen engine needs, the tokenizer (loaded for real: it is
    small and a broken one would fail every request), and the sizes the folder
    states. What needs the graph is checked when it loads (see the engines).
    """
    problem = modelfiles.folder_problem(model_dir, engine)
    if problem:
        return problem
    d = Path(model_dir)
    tokenizer = d / modelfiles.TOKENIZER_FILE
    for f in d.iterdir():
        if f.suffix in (".onnx", ".safetensors") and f.is_file() and f.stat().st_size == 0:
            return f"{f} is empty"
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        return f"{tokenizer} cannot be read: {exc}"
    from codeparrot_ls.engine.loading import ModelLoadError, model_sizes

    try:
        model_sizes(d)      # export.json / config.json: objects, sizes in range and in agreement
    except ModelLoadError as exc:
        return str(exc)
    return None


@dataclass
class ModelStatus:
    state: str                  # loading | ready | error | none
    model: str = ""
    engine: str = ""
    message: str = ""
    load_ms: float | None = None

    def as_params(self) -> dict[str, Any]:
        params = {"state": self.state, "model": self.model, "engine": self.engine, "message": self.message}
        if self.load_ms is not None:
            params["loadMs"] = round(self.load_ms, 1)
        return params


class ModelHolder:
    """Loads one engine on a background thread and keeps its status."""

    def __init__(self, on_change: Callable[[ModelStatus], None] | None = None):
        self.status = ModelStatus("none", message="no model loaded yet")
        self.completer = None
        self.on_change = on_change
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self.completer is not None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def fail(self, message: str, model: str = "") -> None:
        self._set(ModelStatus(ERROR, model=model, message=message))
        self._ready.set()

    def start(self, model_dir: str, engine: str = "auto", threads: int | None = None) -> None:
        if self._thread is not None:
            return
        self._set(ModelStatus(LOADING, model=str(model_dir), engine=engine, message="loading the model"))
        self._thread = threading.Thread(target=self._load, args=(str(model_dir), engine, threads),
                                        name="codeparrot-load", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        if self.completer is not None:
            try:
                self.completer.close()
            except Exception:
                log.exception("closing the engine failed")

    def _load(self, model_dir: str, engine: str, threads: int | None) -> None:
        t0 = time.perf_counter()
        from codeparrot_ls.engine import ModelLoadError, load_engine

        try:
            from codeparrot_ls.completion import Completer

            loaded = load_engine(model_dir, engine=engine, threads=threads)
            completer = Completer(loaded)
        except ModelLoadError as exc:      # the folder's fault, said in the message
            self.fail(f"cannot load the model: {exc}", model=model_dir)
            return
        except Exception as exc:
            log.exception("loading the model from %s failed", model_dir)
            self.fail(f"cannot load the model from {model_dir}: {exc}", model=model_dir)
            return
        self.completer = completer
        info = loaded.info
        self._set(ModelStatus(READY, model=str(model_dir), engine=info.engine,
                              message=f"{info.name} ({info.engine}, {info.n_layer} layers, "
                                      f"{info.n_positions} positions, {_fim_word(info)})",
                              load_ms=(time.perf_counter() - t0) * 1000))
        self._ready.set()

    def _set(self, status: ModelStatus) -> None:
        self.status = status
        log.info("model status: %s %s", status.state, status.message)
        if self.on_change is not None:
            self.on_change(status)


def _fim_word(info) -> str:
    if not info.supports_fim:
        return "no FIM"
    return "FIM where code follows the cursor" if info.fim_default else "FIM tokens, prompts left to right by default"
