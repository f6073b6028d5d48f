"""The server's side of the workspace context: one owner for the workspace index and the
request-time reader (codeparrot_ls/workspace.py, repo_context.py), fed by LSP events.

* `start` takes the roots from `initialize` (`workspaceFolders`, else `rootUri` / `rootPath`)
  and builds the index in the background, unless `workspaceContext` is off.
* `settings_changed`: new index bounds rebuild it; turning the context on builds it.
* `saved` / `files_changed` (didSave, workspace/didChangeWatchedFiles): re-read those files.
* `opened` / `changed` / `closed`: an open document's buffer replaces its copy on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lsprotocol import types

from codeparrot_ls.repo_context import RepoContext, uri_to_path
from codeparrot_ls.workspace import WorkspaceIndex

log = logging.getLogger(__name__)

WATCH_REGISTRATION_ID = "codeparrot-watch-python"
WATCH_GLOB = "**/*.py"


def _bounds(settings) -> tuple[int, int, int]:
    return settings.workspace_max_files, settings.workspace_max_bytes, settings.workspace_max_file_bytes


class RepoService:
    def __init__(self, open_text: Callable[[str], str | None], gate: threading.Event | None = None):
        self.index: WorkspaceIndex | None = None
        self.repo: RepoContext | None = None
        self.roots: list[str] = []
        self._open_text = open_text
        self._bounds: tuple[int, int, int] | None = None
        self._gate = gate      # the index works while it is set (the scheduler is idle)

    # -- roots and settings -----------------------------------------------------------------
    @staticmethod
    def roots_from(params: types.InitializeParams) -> list[str]:
        uris = [f.uri for f in params.workspace_folders or []]
        if not uris and params.root_uri:
            uris = [params.root_uri]
        roots = [p for p in (uri_to_path(u) for u in uris) if p]
        if not roots and params.root_path:
            roots = [params.root_path]
        return roots

    def start(self, roots: list[str], settings) -> None:
        self.roots = roots
        if settings.workspace_context and roots:
            self._build(settings)

    def set_roots(self, roots: list[str], settings) -> None:
        if roots != self.roots:
            self.start(roots, settings)

    def settings_changed(self, settings) -> None:
        if not settings.workspace_context or not self.roots:
            return
        if self.index is None or _bounds(settings) != self._bounds:
            self._build(settings)

    def _build(self, settings) -> None:
        if self.index is not None:
            self.index.close()
        self._bounds = _bounds(settings)
        max_files, max_bytes, max_file_bytes = self._bounds
        self.index = WorkspaceIndex(max_files, max_bytes, max_file_bytes, gate=self._gate)
        self.repo = RepoContext(self.index, self._open_text)
        log.info("workspace index: building from %s", ", ".join(self.roots))
        self.index.start(self.roots)

    # -- events -----------------------------------------------------------------------------
    def saved(self, uri: str) -> None:
        path = uri_to_path(uri)
        if self.index is not None and path:
            self.index.refresh(path)

    def files_changed(self, changes: list[types.FileEvent]) -> None:
        if self.index is None:
            return
        for change in changes:
            path = uri_to_path(change.uri)
            if path:
                self.index.refresh(path)

    def opened(self, uri: str, text: str) -> None:
        path = uri_to_path(uri)
        if self.index is not None and path and path.endswith(".py"):
            self.index.set_buffer(path, text)

    changed = opened

    def closed(self, uri: str) -> None:
        path = uri_to_path(uri)
        if self.index is not None and path and path.endswith(".py"):
            self.index.set_buffer(path, None)

    # -- what requests and stats read ---------------------------------------------------------
    def context_for(self, settings) -> RepoContext | None:
        return self.repo if settings.workspace_context else None

    def stats(self) -> dict:
        if self.index is None:
            return {"state": "off" if self.roots else "no workspace folder", "roots": self.roots}
        return self.index.stats()

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    @staticmethod
    def watch_registration() -> types.RegistrationParams:
        options = types.DidChangeWatchedFilesRegistrationOptions(
            watchers=[types.FileSystemWatcher(glob_pattern=WATCH_GLOB)])
        return types.RegistrationParams(registrations=[types.Registration(
            id=WATCH_REGISTRATION_ID, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options)])
