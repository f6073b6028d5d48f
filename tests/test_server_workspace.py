"""The workspace context end to end: the real `codeparrot-ls` process over stdio on a small
multi-module workspace made here. What reaches the prompt is read from the server's own
prompt log (`--log-level DEBUG`), what the index holds from `codeparrot.stats`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

from lsprotocol import types as T
from pytest_lsp.client import make_test_lsp_client

CLI = [sys.executable, "-m", "codeparrot_ls.cli"]
CAPS = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(
        inline_completion=T.InlineCompletionClientCapabilities(),
        synchronization=T.TextDocumentSyncClientCapabilities(did_save=True)),
    workspace=T.WorkspaceClientCapabilities(
        did_change_watched_files=T.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True)))

GEOMETRY = '''"""Vectors."""
import math

UNIT_SCALE = 2.5


def scale_vector(vector, factor, *, clamp=False):
    """Scale every coordinate."""
    return [x * factor for x in vector]


class Shape:
    sides = 0

    def __init__(self, name, *points):
        self.name = name

    def area(self, precise: bool = True) -> float:
        return 0.0
'''
APP = ("from .geometry import scale_vector, Shape\nfrom pkg import geometry\n\n\ndef run(v):\n"
       "    w = scale_vector(v, geometry.UNIT_SCALE)\n    return scale_vector(")
CURSOR = T.Position(APP.count("\n"), len(APP.split("\n")[-1]))


def make_workspace(root: Path) -> None:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "geometry.py").write_text(GEOMETRY)
    (pkg / "app.py").write_text(APP + "v)\n")                                 # the saved copy parses
    (pkg / "broken.py").write_text("def oops(:\n    pass\n")              # does not parse
    (pkg / "blob.py").write_bytes(b"x = 1\n\0\0\0binary")                  # binary
    (pkg / "latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))    # not UTF-8
    (pkg / "huge.py").write_text("X = 1\n" * 10_000)                       # over workspaceMaxFileBytes
    os.symlink(pkg, pkg / "loop")                                           # a symlink loop
    (root / ".gitignore").write_text("build/\n*.gen.py\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("def built(): ...\n")
    (root / "pkg" / "table.gen.py").write_text("def generated(): ...\n")
    venv = root / "env"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (venv / "lib" / "vendored.py").write_text("def vendored(): ...\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.py").write_text("def secret(): ...\n")


class Client:
    def __init__(self, client, log_file: Path):
        self.client, self.log_file = client, log_file
        self.registrations: list = []

        @client.feature(T.CLIENT_REGISTER_CAPABILITY)
        def register(ls, params):
            self.registrations.extend(params.registrations)

    async def stats(self) -> dict:
        params = T.ExecuteCommandParams("codeparrot.stats")
        return await asyncio.wait_for(self.client.workspace_execute_command_async(params), 30)

    async def wait_index(self, settled=lambda w: True, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            w = stats["workspace"]
            if stats["status"]["state"] == "ready" and w.get("state") == "ready" and settled(w):
                return w
            assert time.monotonic() < deadline, f"index not ready: {w}"
            await asyncio.sleep(0.1)

    def open(self, path: Path, text: str) -> None:
        self.client.text_document_did_open(T.DidOpenTextDocumentParams(
            T.TextDocumentItem(path.as_uri(), "python", 1, text)))

    def replace(self, path: Path, text: str, version: int) -> None:
        self.client.text_document_did_change(T.DidChangeTextDocumentParams(
            T.VersionedTextDocumentIdentifier(version=version, uri=path.as_uri()),
            [T.TextDocumentContentChangeWholeDocument(text=text)]))

    async def complete(self, path: Path, position: T.Position) -> None:
        params = T.InlineCompletionParams(
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
            text_document=T.TextDocumentIdentifier(path.as_uri()), position=position)
        await asyncio.wait_for(self.client.text_document_inline_completion_async(params), 60)

    def prompts(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")


@contextlib.asynccontextmanager
async def serve(model: Path, folders: list[Path], log_file: Path, init: dict | None = None):
    client = make_test_lsp_client()
    session = Client(client, log_file)
    env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
    await client.start_io(*CLI, "--model", str(model), "--log-level", "DEBUG", "--log-file", str(log_file), env=env)
    try:
        await asyncio.wait_for(client.initialize_session(T.InitializeParams(
            capabilities=CAPS, initialization_options={"workspaceContext": True, **(init or {})},
            root_uri=folders[0].as_uri(),
            workspace_folders=[T.WorkspaceFolder(f.as_uri(), f.name) for f in folders])), 60)
        yield session
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        if client._server is not None and client._server.returncode is None:
            client._server.kill()
        await client.stop()


async def test_definitions_from_other_modules_reach_the_prompt_and_follow_edits(tiny_onnx_dir, tmp_path):
    ws = tmp_path / "ws"
    make_workspace(ws)
    log_file = tmp_path / "server.log"
    async with serve(tiny_onnx_dir, [ws, tmp_path / "vanished"], log_file,
                     init={"workspaceMaxFileBytes": 20_000, "maxNewTokens": 4, "workspaceShare": 0.75}) as s:
        w = await s.wait_index()
        # Indexed: pkg/__init__, geometry, app, broken (it parses not, but is a module).
        assert w["files"] == 4 and w["unparsable"] == 1, w
        skipped = w["skipped"]
        assert skipped["binary"] == 1 and skipped["undecodable"] == 1 and skipped["tooLarge"] == 1, skipped
        assert skipped["syntaxError"] == 1 and skipped["symlinkLoop"] >= 1 and skipped["missingFolder"] == 1
        assert skipped["ignored"] == 2 and skipped["excludedFolder"] == 2   # build/ + *.gen.py; env + .hidden
        assert w["buildMs"] > 0 and w["bytes"] == sum(
            (ws / "pkg" / n).stat().st_size for n in ("__init__.py", "geometry.py", "app.py", "broken.py"))
        assert [r.method for r in s.registrations] == ["workspace/didChangeWatchedFiles"]

        app = ws / "pkg" / "app.py"
        s.open(app, APP)
        await s.complete(app, CURSOR)
        log = s.prompts()
        # The name on the cursor's line comes last, nearest the document, then those of the
        # line above; the class only imported first.
        assert ("# ws/pkg/geometry.py\nclass Shape:\n    sides = 0\n    def __init__(self, name, *points): ...\n"
                "    def area(self, precise: bool = True) -> float: ...\n"
                "UNIT_SCALE = 2.5\ndef scale_vector(vector, factor, *, clamp=False): ...\n<|endoftext|>") in log
        assert "def built" not in log and "vendored" not in log and "secret" not in log
        # Before the name on that line, the line uses no workspace name yet: no workspace context.
        await s.complete(app, T.Position(CURSOR.line, len("    return ")))
        plain = s.prompts()[len(log):]
        assert "prompt for" in plain and "geometry.py" not in plain
        log = s.prompts()

        # An edit on disk, announced by the watcher, is picked up.
        (ws / "pkg" / "geometry.py").write_text(GEOMETRY.replace("def scale_vector(vector, factor",
                                                                 "def stretch_vector(vector, amount"))
        s.client.workspace_did_change_watched_files(T.DidChangeWatchedFilesParams(
            [T.FileEvent((ws / "pkg" / "geometry.py").as_uri(), T.FileChangeType.Changed)]))
        await s.wait_index(lambda w: w["updates"] >= 1)
        edited = APP.replace("scale_vector", "stretch_vector")
        at_end = T.Position(edited.count("\n"), len(edited.split("\n")[-1]))
        s.replace(app, edited, 2)
        await s.complete(app, at_end)
        assert "def stretch_vector(vector, amount, *, clamp=False): ..." in s.prompts()[len(log):]

        # An open module edited and saved: its new definition is used after didSave.
        geometry = ws / "pkg" / "geometry.py"
        s.open(geometry, geometry.read_text())
        saved = geometry.read_text() + "\n\ndef fresh_helper(a, b=3):\n    return a\n"
        s.replace(geometry, saved, 2)
        geometry.write_text(saved)
        s.client.text_document_did_save(T.DidSaveTextDocumentParams(T.TextDocumentIdentifier(geometry.as_uri())))
        fresh = edited.replace("Shape\n", "Shape, fresh_helper\n", 1).replace("return stretch_vector(", "return fresh_helper(")
        s.replace(app, fresh, 3)
        before = len(s.prompts())
        await s.wait_index(lambda w: w["updates"] >= 2)
        await asyncio.sleep(0.8)   # the open buffer is parsed once edits pause (0.5 s)
        await s.wait_index()
        await s.complete(app, T.Position(fresh.count("\n"), len(fresh.split("\n")[-1])))
        assert "def fresh_helper(a, b=3): ..." in s.prompts()[before:]

        # workspaceContext off: no definitions (the open module still gives windows, as any open file).
        s.client.workspace_did_change_configuration(T.DidChangeConfigurationParams({"workspaceContext": False}))
        before = len(s.prompts())
        s.replace(app, edited + "\n", 4)
        await s.complete(app, at_end)
        new = s.prompts()[before:]
        assert "prompt for" in new and "# ws/pkg/geometry.py" not in new

        # Bounds: at most two files.
        s.client.workspace_did_change_configuration(T.DidChangeConfigurationParams(
            {"workspaceContext": True, "workspaceMaxFiles": 2}))
        w = await s.wait_index(lambda w: w["truncated"] == "maxFiles")
        assert w["files"] == 2
        stats = await s.stats()
        assert stats["status"]["state"] == "ready"
