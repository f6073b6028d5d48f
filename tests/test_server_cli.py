"""`codeparrot-ls` on the command line: bad model folders and usage errors exit 2 with a
clear message before any LSP traffic; `--tcp` serves a real client on a loopback port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys

import pytest
from lsprotocol import types as T
from pytest_lsp.client import make_test_lsp_client

CLI = [sys.executable, "-m", "codeparrot_ls.cli"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=full_env, stdin=subprocess.DEVNULL)


def test_a_missing_model_folder_exits_2_with_a_clear_message():
    done = run_cli("--model", "/nonexistent/model")
    assert done.returncode == 2
    assert "/nonexistent/model" in done.stderr and "does not exist" in done.stderr
    assert done.stdout == ""          # nothing on the LSP channel


def test_the_environment_variable_is_checked_the_same_way(tmp_path):
    done = run_cli(env={"CODEPARROT_LS_MODEL": str(tmp_path / "gone")})
    assert done.returncode == 2
    assert "CODEPARROT_LS_MODEL" in done.stderr and "does not exist" in done.stderr


def test_broken_model_folders_exit_2(tmp_path, tiny_onnx_dir, tiny_checkpoint_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli("--model", str(empty))
    assert done.returncode == 2 and "tokenizer.json" in done.stderr

    bad_tokenizer = tmp_path / "bad_tokenizer"
    shutil.copytree(tiny_onnx_dir, bad_tokenizer)
    (bad_tokenizer / "tokenizer.json").write_text("{not json", encoding="utf-8")
    done = run_cli("--model", str(bad_tokenizer))
    assert done.returncode == 2 and "cannot be read" in done.stderr

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_onnx_dir / "tokenizer.json", no_weights)
    done = run_cli("--model", str(no_weights))
    assert done.returncode == 2 and "neither an ONNX model" in done.stderr

    done = run_cli("--model", str(tiny_checkpoint_dir), "--engine", "onnx")
    assert done.returncode == 2 and "has no ONNX model" in done.stderr


@pytest.mark.parametrize("args", [["--engine", "tensorflow"], ["--threads", "0"], ["--port", "0", "--tcp"],
                                  ["--stdio", "--tcp"], ["--log-level", "LOUD"]])
def test_usage_errors_exit_2(args):
    done = run_cli(*args)
    assert done.returncode == 2 and "usage:" in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_addresses() -> set[str]:
    """This machine's outward addresses (a UDP "connect" sends nothing; it only picks a route)."""
    found = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            found.add(s.getsockname()[0])
        except OSError:
            pass
    return {a for a in found if not a.startswith("127.") and a != "0.0.0.0"}


async def test_tcp_mode_serves_a_client_on_loopback(tiny_onnx_dir, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
    token_file = tmp_path / "token"
    server = await asyncio.create_subprocess_exec(*CLI, "--model", str(tiny_onnx_dir), "--tcp", "--port", str(port),
                                                  "--token-file", str(token_file),
                                                  env=env, stdin=asyncio.subprocess.DEVNULL)
    client = make_test_lsp_client()
    try:
        for _ in range(600):            # wait until it listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                assert server.returncode is None, "the server exited"
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the server never listened")
        result = await asyncio.wait_for(client.initialize_session(T.InitializeParams(capabilities=T.ClientCapabilities(
            text_document=T.TextDocumentClientCapabilities(inline_completion=T.InlineCompletionClientCapabilities())),
            initialization_options={"token": token_file.read_text().strip()})), 60)
        assert result.capabilities.inline_completion_provider is not None
        assert result.server_info.name == "codeparrot-ls"
        # Bound to loopback only: no other local address accepts the connection.
        for address in non_loopback_addresses():
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(2)
                s.connect((address, port))
        await asyncio.wait_for(client.shutdown_async(None), 30)
        client.exit(None)
        # `exit` ends this client's session only: the server closes the connection and listens on.
        await asyncio.wait_for(asyncio.gather(*client._async_tasks), 30)
        assert server.returncode is None
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        await client.stop()
