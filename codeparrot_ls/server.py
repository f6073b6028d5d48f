"""The language server: the LSP features, one handler each.

| LSP message                              | what it does                                          |
|------------------------------------------|-------------------------------------------------------|
| initialize                               | settings from initializationOptions; starts the load |
| initialized                              | sends the model status; pulls `codeparrot` settings   |
| textDocument/inlineCompletion            | ghost-text suggestions (the main feature)            |
| textDocument/completion                  | the same suggestions as list items, only for clients |
|                                          | without inline completion                            |
| textDocument/didOpen, didChange, didClose| incremental sync (pygls' workspace); a change cancels|
|                                          | the document's pending suggestion; recency of use;   |
|                                          | the workspace index takes open buffers as the truth  |
| textDocument/didSave,                    | the workspace index re-reads those files (the watcher|
| workspace/didChangeWatchedFiles          | is registered when the client allows it)             |
| workspace/didChangeWorkspaceFolders      | the workspace index is rebuilt for the new folders   |
| workspace/didChangeConfiguration         | new settings (bad values are reported and ignored)  |
| workspace/executeCommand                 | `codeparrot.acceptCompletion`, `codeparrot.stats`     |
| textDocument/didShowCompletion,          | Copilot-compatible: a suggestion was shown / its     |
| textDocument/didPartiallyAcceptCompletion| first acceptedLength characters accepted (counted)   |
| shutdown                                 | stops decoding, releases the model                    |
| $/codeparrot/status (server -> client)   | loading / ready / error, with details                 |

Nothing here opens a network connection: completions, accept counts and logs
stay on this machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from codeparrot_ls import __version__
from codeparrot_ls.acceptance import Acceptance
from codeparrot_ls.positions import encoding_name, locate, normalize_newlines, to_document_newlines
from codeparrot_ls.protocol import CodeparrotProtocol, lsp_text_document
from codeparrot_ls.repo_context import path_to_uri, uri_to_path
from codeparrot_ls.repo_service import RepoService
from codeparrot_ls.scheduler import Scheduler
from codeparrot_ls.settings import MIN_PROMPT_TOKENS, CompletionSettings
from codeparrot_ls.status import ERROR, READY, ModelHolder, ModelStatus, default_model_dir, model_problem

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "$/codeparrot/status"
ACCEPT_COMMAND = "codeparrot.acceptCompletion"
STATS_COMMAND = "codeparrot.stats"
# Copilot-compatible notifications: a suggestion was shown / the start of one was accepted.
DID_SHOW = "textDocument/didShowCompletion"
DID_PARTIALLY_ACCEPT = "textDocument/didPartiallyAcceptCompletion"
SETTINGS_SECTION = "codeparrot"
COMPLETION_LABEL = "codeparrot"         # shown beside each list item so it is never mistaken for another source
MAX_OTHER_DOCUMENTS = 8                 # other open files offered to the context builder
MAX_OTHER_CHARS = 1_000_000
BIG_DOCUMENT_CHARS = 1_000_000          # closing one gives its memory back to the system
_SURROGATE = re.compile("[\ud800-\udfff]")


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
        self.touched: dict[str, None] = {}        # document URIs, least recently used first
        self.big_documents: set[str] = set()      # open documents of BIG_DOCUMENT_CHARS or more
        self.client_ready = False                 # `initialized` received: notifications may flow
        self.loop: asyncio.AbstractEventLoop | None = None
        self.repo = RepoService(open_text=self.open_text)

    def configure(self, model: str | None, source: str, engine: str, threads: int | None,
                  holder: ModelHolder | None = None) -> None:
        """The model given at start (already checked by the CLI), maybe already loading in `holder`."""
        self.startup_model, self.startup_source = model, source
        self.engine_choice, self.threads = engine, threads
        if holder is not None:
            holder.on_change = self._status_changed
            self.model = holder

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
        options = _section(options)
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

    # -- completions ----------------------------------------------------------------------------
    async def suggest(self, uri: str, position: types.Position, invoked: bool):
        """Suggestions at `position` as (insert text, range), the text in the document's line
        breaks and the range in the client's position encoding. A position past the document's
        last line gets none; a column past the end of its line is the end (LSP's rule)."""
        key = unquote(uri)
        doc = self.workspace.text_documents.get(key)
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: open it with textDocument/didOpen first")
        completer = self.model.completer
        if not self.settings.enabled or completer is None:
            return []
        cursor = locate(doc.source, position.line, position.character,
                        encoding_name(self.workspace.position_encoding))
        if cursor is None:
            log.info("no line %d in %s: no suggestion", position.line, uri)
            return []
        text, offset, settings = _tokenizable(cursor.text), cursor.offset, self.settings
        others = self.other_documents(key)
        repo = self.repo.context_for(settings)

        def job(is_cancelled):
            return completer.complete(uri, text, offset, settings, invoked,
                                      other_documents=others, is_cancelled=is_cancelled, repo=repo)

        finished, suggestions = await self.scheduler.run(key, job)
        if not finished or not suggestions:
            return []
        at = types.Position(cursor.line, cursor.character)
        return [(s, to_document_newlines(s.insert_text, cursor.newline), types.Range(at, at))
                for s in suggestions]

    def touch(self, key: str) -> None:
        self.touched.pop(key, None)
        self.touched[key] = None          # insertion order = recency

    def other_documents(self, key: str) -> list[tuple[str, str]]:
        """The most recently used other open Python documents, for snippets of related code.

        Bounded in number and size: ranking snippets costs time in every request, before the
        first token, where a cancellation cannot stop it.
        """
        self.touch(key)
        out = []
        for uri in reversed(self.touched):
            text = None if uri == key else self.snippet_source(uri)
            if text is None:
                continue
            out.append((uri, text))
            if len(out) == MAX_OTHER_DOCUMENTS:
                break
        return out

    def snippet_source(self, key: str) -> str | None:
        """An open document's text as snippets are taken from it, or None when it gives none."""
        doc = self.workspace.text_documents.get(key)
        if doc is None or not _is_python(doc) or len(doc.source) > MAX_OTHER_CHARS:
            return None
        return _tokenizable(normalize_newlines(doc.source))

    def open_text(self, path: str) -> str | None:
        """The buffer of the open document at `path` (the truth for it), else None."""
        doc = self.workspace.text_documents.get(unquote(path_to_uri(path)))
        return _tokenizable(normalize_newlines(doc.source)) if doc is not None else None

    def index_for_snippets(self, key: str) -> None:
        """Cut a newly opened document into snippet windows now, not in the first request
        that uses it (~5 ms per 100 KB, before that request's first token)."""
        completer, text = self.model.completer, self.snippet_source(key)
        if completer is not None and text is not None:
            completer.builder.snippet_index.document(key, text)

    def accept_command(self, uri: str, suggestion) -> types.Command:
        info = {"uri": uri, "chars": len(suggestion.insert_text), "lines": suggestion.insert_text.count("\n") + 1,
                "fromCache": suggestion.from_cache}
        return types.Command(title="Accept codeparrot suggestion", command=ACCEPT_COMMAND, arguments=[info])

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


def _section(options: Any) -> dict[str, Any]:
    """Settings are accepted flat or under a `codeparrot` key (as VS Code and Neovim send them)."""
    if not isinstance(options, dict):
        return {}
    inner = options.get(SETTINGS_SECTION)
    return inner if isinstance(inner, dict) else options


def _code_block(ls: CodeparrotServer, code: str) -> types.MarkupContent | str:
    caps = ls.client_capabilities.text_document
    item = caps and caps.completion and caps.completion.completion_item
    if item and item.documentation_format and types.MarkupKind.Markdown in item.documentation_format:
        return types.MarkupContent(types.MarkupKind.Markdown, f"```python\n{code}\n```")
    return code


def _tokenizable(text: str) -> str:
    """Lone surrogates (binary-ish input) cannot be tokenized; U+FFFD keeps every offset."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def release_freed_memory() -> None:
    """Hand the memory freed by a closed big document back to the system. glibc keeps freed
    blocks of a few megabytes (its mmap threshold grows with every such block freed), so
    without this the server's RSS stays at its peak after the document is gone."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):   # not glibc: nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _is_python(doc) -> bool:
    return doc.language_id == "python" or (doc.uri or "").endswith((".py", ".pyi"))


SERVER = CodeparrotServer()


def new_server() -> CodeparrotServer:
    """A server with SERVER's features and nothing else of it: a TCP connection's own session."""
    server = CodeparrotServer()
    features = SERVER.protocol.fm
    for name, handler in features.features.items():
        server.feature(name, features.feature_options.get(name))(getattr(handler, "func", handler))
    for name, handler in features.commands.items():
        server.command(name)(getattr(handler, "func", handler))
    return server


@SERVER.feature(types.INITIALIZE)
def initialize(ls: CodeparrotServer, params: types.InitializeParams) -> None:
    ls.loop = asyncio.get_running_loop()
    # pygls made the workspace just before this handler; no document is open yet.
    ls.workspace._create_text_document = functools.partial(lsp_text_document, ls.workspace)
    options = _section(params.initialization_options)
    ls.apply_settings(options, "initializationOptions")
    ls.repo.start(RepoService.roots_from(params), ls.settings)
    engine = options.get("engine", ls.engine_choice)
    if ls.startup_model:
        if options.get("model") and options["model"] != ls.startup_model:
            log.info("initializationOptions.model %s ignored: %s gives %s",
                     options["model"], ls.startup_source, ls.startup_model)
        ls.model.start(ls.startup_model, ls.engine_choice, ls.threads)
        return
    model = options.get("model") or default_model_dir()
    if not model:
        ls.model.fail("no model: pass --model DIR, set CODEPARROT_LS_MODEL, or give initializationOptions.model")
        return
    problem = model_problem(str(model), engine) if isinstance(model, (str, Path)) else "model must be a path"
    if problem:
        ls.model.fail(f"bad model folder: {problem}", model=str(model))
        return
    ls.model.start(str(model), engine, ls.threads)


@SERVER.feature(types.INITIALIZED)
async def initialized(ls: CodeparrotServer, params: types.InitializedParams) -> None:
    ls.client_ready = True
    ls.send_status(ls.model.status)
    caps = ls.client_capabilities
    watched = caps and caps.workspace and caps.workspace.did_change_watched_files
    if watched and watched.dynamic_registration:
        try:
            await ls.client_register_capability_async(RepoService.watch_registration())
        except Exception as exc:
            log.info("registering the file watcher failed: %s", exc)
    if caps and caps.workspace and caps.workspace.configuration:
        try:
            config = await ls.workspace_configuration_async(
                types.ConfigurationParams([types.ConfigurationItem(section=SETTINGS_SECTION)]))
        except Exception as exc:
            log.info("workspace/configuration failed: %s", exc)
            return
        if config and isinstance(config[0], dict):
            ls.apply_settings(config[0], "workspace/configuration")


@SERVER.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: CodeparrotServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    results = await ls.suggest(params.text_document.uri, params.position, invoked)
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=text, range=r,
                                   command=ls.accept_command(params.text_document.uri, s))
        for s, text, r in results])


@SERVER.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
async def completion(ls: CodeparrotServer, params: types.CompletionParams) -> types.CompletionList:
    # Clients with inline completion get ghost text instead; answering both would run the model twice.
    if ls.client_has_inline_completion():
        return types.CompletionList(is_incomplete=False, items=[])
    results = await ls.suggest(params.text_document.uri, params.position, invoked=False)
    items = []
    for rank, (s, text, r) in enumerate(results):
        # The edit inserts at the cursor; filterText is the same text (clients filter on it).
        first = next((ln for ln in s.insert_text.splitlines() if ln.strip()), s.insert_text).strip()
        items.append(types.CompletionItem(
            label=first if len(first) <= 60 else first[:57] + "...",
            label_details=types.CompletionItemLabelDetails(description=COMPLETION_LABEL),
            kind=types.CompletionItemKind.Text,
            detail="codeparrot-ls (local model)",
            documentation=_code_block(ls, s.insert_text),
            sort_text=f"~{COMPLETION_LABEL}{rank:02d}",   # after every other source's items
            filter_text=text,
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=r, new_text=text),
            command=ls.accept_command(params.text_document.uri, s)))
    return types.CompletionList(is_incomplete=True, items=items)


@SERVER.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodeparrotServer, params: types.DidOpenTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.touch(key)
    ls.index_for_snippets(key)
    ls.repo.opened(key, _tokenizable(normalize_newlines(params.text_document.text)))
    if len(params.text_document.text) >= BIG_DOCUMENT_CHARS:
        ls.big_documents.add(key)


@SERVER.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CodeparrotServer, params: types.DidChangeTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.touch(key)
    ls.scheduler.cancel(key, "changed")
    doc = ls.workspace.text_documents.get(key)
    if doc is not None:
        ls.repo.changed(key, _tokenizable(normalize_newlines(doc.source)))


@SERVER.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CodeparrotServer, params: types.DidCloseTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.touched.pop(key, None)
    ls.scheduler.cancel(key, "closed")
    ls.repo.closed(key)
    if ls.model.completer is not None:
        ls.model.completer.forget(key)       # its caches and snippet windows: memory comes back
    if key in ls.big_documents:
        ls.big_documents.discard(key)
        release_freed_memory()


@SERVER.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: CodeparrotServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.repo.saved(unquote(params.text_document.uri))


@SERVER.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def did_change_watched_files(ls: CodeparrotServer, params: types.DidChangeWatchedFilesParams) -> None:
    ls.repo.files_changed(params.changes)


@SERVER.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
def did_change_workspace_folders(ls: CodeparrotServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    roots = [f.uri for f in ls.workspace.folders.values()] if ls.workspace.folders else []
    ls.repo.set_roots([p for p in (uri_to_path(u) for u in roots) if p], ls.settings)


@SERVER.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: CodeparrotServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    caps = ls.client_capabilities
    if not settings and caps and caps.workspace and caps.workspace.configuration:
        # Pull model (VS Code sends `settings: null` and expects the server to ask).
        config = await ls.workspace_configuration_async(
            types.ConfigurationParams([types.ConfigurationItem(section=SETTINGS_SECTION)]))
        settings = config[0] if config else None
    ls.apply_settings(settings, "workspace/didChangeConfiguration")


@SERVER.command(ACCEPT_COMMAND)
def accept_completion(ls: CodeparrotServer, *args: Any) -> None:
    # Recorded here only: the count goes to the local log and stats, never over the network.
    count = ls.acceptance.did_accept()
    info = args[0] if args and isinstance(args[0], dict) else {}
    log.info("suggestion accepted (%d so far): %s chars, %s lines, from cache: %s", count,
             info.get("chars"), info.get("lines"), info.get("fromCache"))


@SERVER.feature(DID_SHOW)
def did_show_completion(ls: CodeparrotServer, params: Any) -> None:
    ls.acceptance.did_show(params)


@SERVER.feature(DID_PARTIALLY_ACCEPT)
def did_partially_accept_completion(ls: CodeparrotServer, params: Any) -> None:
    problem = ls.acceptance.did_partially_accept(params)
    if problem:   # a notification has no reply: the log says why it was not counted
        log.warning("%s ignored: %s", DID_PARTIALLY_ACCEPT, problem)


@SERVER.command(STATS_COMMAND)
def stats(ls: CodeparrotServer, *args: Any) -> dict[str, Any]:
    return ls.stats()


@SERVER.feature(types.SHUTDOWN)
def shutdown(ls: CodeparrotServer, params: None) -> None:
    ls.scheduler.shutdown()
    ls.model.close()
    ls.repo.close()
