"""TCP mode against the real server on 127.0.0.1: one session at a time, each connection its own
(documents, replies, statistics), a disconnect ends only its session, the shared secret, and
the loopback-only default."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
from rawlsp import CLI, WAIT_S, free_port, initialize, inline_params, open_document, server_env, tcp_client, tcp_server

INVALID_REQUEST, INVALID_PARAMS, SERVER_NOT_INITIALIZED = -32600, -32602, -32002
SECRET_URI = "file:///home/alice/secret_project/keys.py"
TEXT = "API_KEY = 'do-not-share'\n\ndef sign(message):\n    return "
STATS = {"command": "codeparrot.stats"}


@pytest.fixture
def tcp(tiny_onnx_dir, tmp_path):
    log = tmp_path / "server.log"
    with tcp_server("--model", str(tiny_onnx_dir), token_file=tmp_path / "token", log_file=log) as served:
        yield served


def test_a_second_client_is_refused_while_the_first_is_served_and_sees_nothing_of_it(tcp):
    proc, port, token = tcp
    alice = tcp_client(port)
    mallory = tcp_client(port, first_id=1000)
    try:
        assert "result" in initialize(alice, token)
        open_document(alice, SECRET_URI, TEXT)
        assert "result" in alice.call("textDocument/inlineCompletion", inline_params(SECRET_URI, 3, 11))

        # Before initialize, nothing is served; alice's documents are not even named.
        reply = mallory.call("textDocument/inlineCompletion", inline_params(SECRET_URI, 3, 11))
        assert reply["error"]["code"] == SERVER_NOT_INITIALIZED
        assert mallory.call("workspace/executeCommand", STATS)["error"]["code"] == SERVER_NOT_INITIALIZED
        # With the right token, still refused: alice's session is active.
        refused = initialize(mallory, token)
        assert refused["error"]["code"] == INVALID_REQUEST and "another client" in refused["error"]["message"]
        assert mallory.wait_closed()

        # alice's session went on untouched, and got none of mallory's replies.
        stats = alice.call("workspace/executeCommand", STATS)["result"]
        assert stats["scheduler"]["requests"] == 1
        assert "result" in alice.call("textDocument/inlineCompletion", inline_params(SECRET_URI, 3, 11))
        assert all(m["id"] < 1000 for m in alice.received if "method" not in m)
        assert "secret_project" not in json.dumps(mallory.received)
        alice.hang_up()
        assert alice.wait_closed()
    finally:
        mallory.close()
        alice.close()

    # alice's disconnect ended her session only: the next client gets a session of its own.
    bob = tcp_client(port)
    try:
        assert "result" in initialize(bob, token)
        reply = bob.call("textDocument/inlineCompletion", inline_params(SECRET_URI, 3, 11))
        assert reply["error"]["code"] == INVALID_PARAMS and "unknown document" in reply["error"]["message"]
        stats = bob.call("workspace/executeCommand", STATS)["result"]
        assert stats["scheduler"]["requests"] == 0 and stats["accepted"] == 0
        assert stats["snippetDocuments"] == 0
        assert "secret_project" not in json.dumps(stats)
        assert proc.poll() is None
    finally:
        bob.close()


def test_initialize_without_the_right_token_is_refused_and_the_connection_closed(tcp, tmp_path):
    proc, port, token = tcp
    mode = stat.S_IMODE((tmp_path / "token").stat().st_mode)
    assert mode == 0o600 and len(token) == 64
    for options in ({}, {"token": "0" * 64}, {"token": token[:-1]}, {"token": 12345}, {"codeparrot": {"token": ""}}):
        client = tcp_client(port)
        try:
            reply = initialize(client, **options)
            assert reply["error"]["code"] == INVALID_REQUEST and reply["error"]["data"] == {"retry": False}
            assert "token" in reply["error"]["message"]
            assert client.wait_closed()
        finally:
            client.close()
    client = tcp_client(port)
    try:
        assert "result" in initialize(client, codeparrot={"token": token})    # settings' section works too
        assert "result" in client.call("workspace/executeCommand", STATS)
        client.call("shutdown")
        client.notify("exit")
        assert client.wait_closed()
    finally:
        client.close()
    proc.kill()
    proc.wait(WAIT_S)
    assert token not in (tmp_path / "server.log").read_text()     # initialize's token is not logged


def test_an_existing_token_file_is_kept_and_one_readable_by_others_is_replaced(tmp_path):
    token_file = tmp_path / "token"
    with tcp_server(token_file=token_file) as (_, _, first):
        pass
    with tcp_server(token_file=token_file) as (_, _, second):
        assert second == first
    token_file.chmod(0o644)
    with tcp_server(token_file=token_file) as (_, port, third):
        assert third != first and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        client = tcp_client(port)
        try:
            assert "error" in initialize(client, first)
        finally:
            client.close()


def test_a_host_other_than_loopback_needs_allow_remote(tmp_path):
    args = [*CLI, "--tcp", "--host", "0.0.0.0", "--port", str(free_port()), "--token-file", str(tmp_path / "token")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=WAIT_S, env=server_env(),
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--allow-remote" in done.stderr and "loopback" in done.stderr
    assert not (tmp_path / "token").exists()

    proc = subprocess.Popen([*args, "--allow-remote"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env())
    try:
        warning = b""
        while b"not loopback" not in warning:
            line = proc.stderr.readline()
            assert line, f"the server ended without the warning: {warning!r}"
            warning += line
        assert b"WARNING" in warning
    finally:
        proc.kill()
        proc.wait(WAIT_S)


def test_localhost_is_loopback(tiny_onnx_dir, tmp_path):
    with tcp_server("--model", str(tiny_onnx_dir), "--host", "localhost", token_file=tmp_path / "token") as (_, port, token):
        client = tcp_client(port)
        try:
            assert "result" in initialize(client, token)
        finally:
            client.close()
