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
import functools
import logging
from typing import Any
from urllib.parse import unquote

from lsprotocol import types

from codeparrot_ls.documents import tokenizable
from codeparrot_ls.positions import normalize_newlines
from codeparrot_ls.protocol import lsp_text_document
from codeparrot_ls.repo_context import uri_to_path
from codeparrot_ls.repo_service import RepoService
from codeparrot_ls.session import CodeparrotServer
from codeparrot_ls.settings import client_options
from codeparrot_ls.suggestions import ACCEPT_COMMAND, completion_list, inline_list, suggest

log = logging.getLogger(__name__)

STATS_COMMAND = "codeparrot.stats"
# Copilot-compatible notifications: a suggestion was shown / the start of one was accepted.
DID_SHOW = "textDocument/didShowCompletion"
DID_PARTIALLY_ACCEPT = "textDocument/didPartiallyAcceptCompletion"

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
    options = client_options(params.initialization_options)
    ls.apply_settings(options, "initializationOptions")
    ls.repo.start(RepoService.roots_from(params), ls.settings)
    ls.start_model(options)


@SERVER.feature(types.INITIALIZED)
async def initialized(ls: CodeparrotServer, params: types.InitializedParams) -> None:
    ls.client_ready = True
    ls.send_status(ls.model.status)
    await ls.watch_files()
    if ls.can_pull_settings():
        try:
            settings = await ls.pull_settings()
        except Exception as exc:
            log.info("workspace/configuration failed: %s", exc)
            return
        if isinstance(settings, dict):
            ls.apply_settings(settings, "workspace/configuration")


@SERVER.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: CodeparrotServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    results = await suggest(ls, params.text_document.uri, params.position, invoked)
    return inline_list(params.text_document.uri, results)


@SERVER.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
async def completion(ls: CodeparrotServer, params: types.CompletionParams) -> types.CompletionList:
    # Clients with inline completion get ghost text instead; answering both would run the model twice.
    if ls.client_has_inline_completion():
        return types.CompletionList(is_incomplete=False, items=[])
    results = await suggest(ls, params.text_document.uri, params.position, invoked=False)
    return completion_list(params.text_document.uri, results, ls.client_capabilities)


@SERVER.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodeparrotServer, params: types.DidOpenTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.documents.opened(key, params.text_document.text, ls.model.completer)
    ls.repo.opened(key, tokenizable(normalize_newlines(params.text_document.text)))


@SERVER.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CodeparrotServer, params: types.DidChangeTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.documents.touch(key)
    ls.scheduler.cancel(key, "changed")
    doc = ls.workspace.text_documents.get(key)
    if doc is not None:
        ls.repo.changed(key, tokenizable(normalize_newlines(doc.source)))


@SERVER.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CodeparrotServer, params: types.DidCloseTextDocumentParams) -> None:
    key = unquote(params.text_document.uri)
    ls.scheduler.cancel(key, "closed")
    ls.repo.closed(key)
    if ls.model.completer is not None:
        ls.model.completer.forget(key)       # its caches and snippet windows: memory comes back
    ls.documents.closed(key)


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
    if not settings and ls.can_pull_settings():
        # Pull model (VS Code sends `settings: null` and expects the server to ask).
        settings = await ls.pull_settings()
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
