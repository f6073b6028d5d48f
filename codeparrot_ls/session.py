"""The state behind the features in codeparrot_ls/server.py, one instance per client session:
the model, the settings, the scheduler, the open documents, the workspace index, accept
counts; and what no single feature owns: the model's status, settings changes, stats.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from codeparrot_ls import __version__
from codeparrot_ls.acceptance import Acceptance
from codeparrot_ls.documents import OpenDocuments
from codeparrot_ls.positions import encoding_name
from codeparrot_ls.protocol import CodeparrotProtocol
from codeparrot_ls.repo_service import RepoService
from codeparrot_ls.scheduler import Scheduler
from codeparrot_ls.settings import MIN_PROMPT_TOKENS, SECTION, CompletionSettings, client_options
from codeparrot_ls.status import ERROR, READY, ModelHolder, ModelStatus, default_model_dir, model_problem

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "$/codeparrot/status"


class CodeparrotServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codeparrot-ls", __version__, protocol_cls=CodeparrotProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = CompletionSettings()
        self.scheduler = Scheduler()
        self.model = ModelHolder(on_change=self._status_changed)
        self.startup_model: str | None = None     # --model or CODEPARROT_LS_MODEL, checked by the CLI
        self.startup_source = ""
        self.engine_choice = "auto"
        self.threads: int | None = None
        self.acceptance = Acceptance()           # shown / accepted counts, local only
        self.documents = OpenDocuments(lambda: self.workspace.text_documents)
        self.client_ready = False                 # `initialized` received: notifications may flow
        self.loop: asyncio.AbstractEventLoop | None = None
        self.repo = RepoService(open_text=self.documents.open_text, gate=self.scheduler.idle)

    def configure(self, model: str | None, source: str, engine: str, threads: int | None,
                  holder: ModelHolder | None = None) -> None:
        """The model given at start (already checked by the CLI), maybe already loading in `holder`."""
        self.startup_model, self.startup_source = model, source
        self.engine_choice, self.threads = engine, threads
        if holder is not None:
            holder.on_change = self._status_changed
            self.model = holder

    def start_model(self, options: dict[str, Any]) -> None:
        """Load the model given at start, else the one `initializationOptions` name, else the
        default; a bad choice is reported as the model's status."""
        engine = options.get("engine", self.engine_choice)
        if self.startup_model:
            if options.get("model") and options["model"] != self.startup_model:
                log.info("initializationOptions.model %s ignored: %s gives %s",
                         options["model"], self.startup_source, self.startup_model)
            self.model.start(self.startup_model, self.engine_choice, self.threads)
            return
        model = options.get("model") or default_model_dir()
        if not model:
            self.model.fail("no model: pass --model DIR, set CODEPARROT_LS_MODEL, or give initializationOptions.model")
            return
        problem = model_problem(str(model), engine) if isinstance(model, (str, Path)) else "model must be a path"
        if problem:
            self.model.fail(f"bad model folder: {problem}", model=str(model))
            return
        self.model.start(str(model), engine, self.threads)

    def end_session(self) -> None:
        """The client is gone (`exit` or a closed connection): stop decoding and indexing, release the model."""
        self.client_ready = False
        self.scheduler.shutdown()
        self.model.close()
        self.repo.close()
        for future in list(self.protocol._request_futures.values()):
            future.cancel()              # requests to the client that will never be answered

    # -- status ---------------------------------------------------------------------------------
    def _status_changed(self, status: ModelStatus) -> None:
        """Called from any thread; notifications are sent from the event loop once the client is ready."""
        if self.loop is not None and self.client_ready:
            self.loop.call_soon_threadsafe(self.send_status, status)

    def send_status(self, status: ModelStatus) -> None:
        self.protocol.notify(STATUS_NOTIFICATION, status.as_params())
        if status.state == READY:
            self.log(types.MessageType.Info, f"codeparrot-ls: model {status.model} ready: {status.message}, "
                                             f"engine {status.engine}, loaded in {status.load_ms:.0f} ms")
            completer = self.model.completer
            try:   # settings given before the model was known
                self.settings.validate(completer.builder.n_positions if completer else None)
            except ValueError as exc:
                self.log(types.MessageType.Warning, f"codeparrot-ls: {exc}; suggestions keep "
                                                    f"{MIN_PROMPT_TOKENS} positions for the prompt meanwhile")
        elif status.state == ERROR:
            # Editors that show $/codeparrot/status raise their own alert; the log reaches the rest.
            self.log(types.MessageType.Error, f"codeparrot-ls: {status.message}")

    def log(self, kind: types.MessageType, message: str) -> None:
        self.window_log_message(types.LogMessageParams(kind, message))

    # -- settings -------------------------------------------------------------------------------
    def apply_settings(self, options: Any, origin: str) -> None:
        options = client_options(options)
        if not options:
            return
        completer = self.model.completer
        try:
            self.settings = self.settings.updated(options, completer.builder.n_positions if completer else None)
        except ValueError as exc:
            message = f"codeparrot-ls: {origin}: {exc}; keeping the previous settings"
            log.warning(message)
            self.window_show_message(types.ShowMessageParams(types.MessageType.Warning, message))
            return
        log.info("settings from %s: %s", origin, self.settings)
        self.repo.settings_changed(self.settings)

    def can_pull_settings(self) -> bool:
        caps = self.client_capabilities
        return bool(caps and caps.workspace and caps.workspace.configuration)

    async def pull_settings(self) -> Any:
        """The client's `codeparrot` settings (workspace/configuration), None when it has none."""
        config = await self.workspace_configuration_async(
            types.ConfigurationParams([types.ConfigurationItem(section=SECTION)]))
        return config[0] if config else None

    # -- the client -----------------------------------------------------------------------------
    async def watch_files(self) -> None:
        """Register the workspace's file watcher when the client lets the server do so."""
        caps = self.client_capabilities
        watched = caps and caps.workspace and caps.workspace.did_change_watched_files
        if watched and watched.dynamic_registration:
            try:
                await self.client_register_capability_async(RepoService.watch_registration())
            except Exception as exc:
                log.info("registering the file watcher failed: %s", exc)

    def client_has_inline_completion(self) -> bool:
        caps = self.client_capabilities
        return bool(caps and caps.text_document and caps.text_document.inline_completion is not None)

    def stats(self) -> dict[str, Any]:
        return {"status": self.model.status.as_params(), **self.acceptance.as_dict(),
                "scheduler": self.scheduler.stats.as_dict(), "running": self.scheduler.running(),
                "completer": vars(self.model.completer.stats).copy() if self.model.completer else None,
                "snippetDocuments": len(self.model.completer.builder.snippet_index) if self.model.completer else 0,
                "workspace": self.repo.stats(),
                "torchImported": "torch" in sys.modules,
                "positionEncoding": encoding_name(self.workspace.position_encoding),
                "settings": vars(self.settings).copy()}
