"""The real server, over stdio and over TCP, fed what careless or hostile clients send:
malformed frames (answered with a parse error, the stream resynchronises), messages out of the
LSP lifecycle, batches, messages that are not JSON-RPC 2.0, deep nesting. Every error reply is
free of tracebacks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rawlsp import RawLsp, frame, initialize, inline_params, open_document, stdio_server, tcp_client, tcp_server

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, SERVER_NOT_INITIALIZED = -32700, -32600, -32602, -32002
URI = "file:///work/example.py"
TEXT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return "
STATS = {"command": "codeparrot.stats"}


@dataclass
class Served:
    kind: str
    proc: object
    client: RawLsp
    token: str | None
    log: Path
    port: int = 0

    def initialize(self, client: RawLsp | None = None) -> dict:
        return initialize(client or self.client, self.token)

    def connect(self) -> RawLsp:
        return tcp_client(self.port)


def serve(kind: str, model: Path, folder: Path):
    log = folder / "server.log"
    args = ("--model", str(model))
    if kind == "stdio":
        with stdio_server(*args, log_file=log) as (proc, client):
            yield Served("stdio", proc, client, None, log)
    else:
        with tcp_server(*args, token_file=folder / "token", log_file=log) as (proc, port, token):
            client = tcp_client(port)
            try:
                yield Served("tcp", proc, client, token, log, port)
            finally:
                client.close()


@pytest.fixture(params=["stdio", "tcp"])
def served(request, tiny_onnx_dir, tmp_path):
    """A fresh server, not initialized (for the lifecycle)."""
    yield from serve(request.param, tiny_onnx_dir, tmp_path)


@pytest.fixture(scope="module", params=["stdio", "tcp"])
def running(request, tiny_onnx_dir, tmp_path_factory):
    """One initialized server per transport for the tests that leave its lifecycle alone; each
    test looks only at what came after its start (`Since`)."""
    for served in serve(request.param, tiny_onnx_dir, tmp_path_factory.mktemp(request.param)):
        assert "result" in served.initialize()
        yield served


class Since:
    """The messages a client received from now on."""

    def __init__(self, client: RawLsp) -> None:
        self.client, self.start = client, len(client.received)

    @property
    def messages(self) -> list[dict]:
        return self.client.received[self.start:]

    def errors(self) -> list[dict]:
        return [m for m in self.messages if "error" in m]


def error_of(reply: dict) -> dict:
    assert "error" in reply, reply
    return reply["error"]


def assert_clean_errors(client: RawLsp) -> None:
    """No error reply carries a traceback, exception text or source paths."""
    for m in list(client.received):
        if "error" in m:
            text = json.dumps(m)
            assert "Traceback" not in text and 'File "' not in text and ".py\", line" not in text, m
            assert m["error"].get("data") in (None, {"retry": False}), m


def assert_still_serving(client: RawLsp) -> None:
    reply = client.call("workspace/executeCommand", STATS)
    assert reply["result"]["status"]["state"] in ("loading", "ready"), reply


def request_body(msg_id) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
                       "params": STATS}).encode()


# -- framing ----------------------------------------------------------------------------------------
MALFORMED = {
    "Content-Length 0": lambda body: frame(body, 0),
    "Content-Length -5": lambda body: frame(body, -5),
    "Content-Length not a number": lambda body: b"Content-Length: x\r\n\r\n" + body,
    "length too small": lambda body: frame(body, 10),
    "length too large": lambda body: frame(body, len(body) + 100),
    "length over the limit": lambda body: frame(body, 10**12),
    "no Content-Length header": lambda body: b"Content-Type: application/json\r\n\r\n" + body,
    "garbage outside frames": lambda body: b"\x00\xff hello, server\r\n\r\n" + body,
    "body not JSON": lambda body: frame(b"{this is not json"),
    "body not UTF-8": lambda body: frame(body.replace(b"codeparrot.stats", b"\xff\xfe")),
}


def test_each_malformed_frame_gets_one_parse_error_and_the_next_frame_is_served(running):
    client = running.client
    for n, (kind, make) in enumerate(MALFORMED.items()):
        since = Since(client)
        client.send_bytes(make(request_body(f"bad{n}")) + frame(request_body(f"good{n}")))
        assert "result" in client.response(f"good{n}"), kind
        errors = since.errors()
        assert len(errors) == 1 and errors[0]["error"]["code"] == PARSE_ERROR, (kind, errors)
        assert errors[0]["id"] in (None, f"bad{n}"), (kind, errors)
    assert_still_serving(client)
    assert_clean_errors(client)


def test_a_length_too_large_is_answered_while_the_client_waits(running):
    """Nothing follows the frame: the pause tells the server the message is all there."""
    body = request_body("waiting")
    running.client.send_bytes(frame(body, len(body) + 50))
    assert error_of(running.client.response("waiting"))["code"] == PARSE_ERROR
    assert_still_serving(running.client)


def test_lenient_headers_are_read(running):
    client = running.client
    client.send_bytes(frame(request_body("h1"), header=b"Content-Length:"))            # no space
    client.send_bytes(frame(request_body("h2"), header=b"content-length: "))           # any case
    client.send_bytes(b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
                      % len(request_body("h3")) + request_body("h3"))
    client.send_bytes(b"Content-Length: %d\n\n" % len(request_body("h4")) + request_body("h4"))  # bare \n
    for msg_id in ("h1", "h2", "h3", "h4"):
        assert "result" in client.response(msg_id)


def test_frames_split_at_every_byte_are_read(running):
    data = frame(request_body("split-bad"), 10) + frame(request_body("split"))
    for i in range(len(data)):
        running.client.send_bytes(data[i:i + 1])
    assert "result" in running.client.response("split")


# -- messages ---------------------------------------------------------------------------------------
def test_batches_and_messages_that_are_not_json_rpc_get_invalid_request(running):
    client = running.client
    since = Since(client)
    client.send([{"jsonrpc": "2.0", "id": "b1", "method": "shutdown"},
                 {"jsonrpc": "2.0", "id": "b2", "method": "workspace/executeCommand", "params": STATS}])
    for msg_id in ("b1", "b2"):
        assert error_of(client.response(msg_id))["code"] == INVALID_REQUEST
    client.send({"id": "no-version", "method": "workspace/executeCommand", "params": STATS})
    client.send({"jsonrpc": "1.0", "id": "old-version", "method": "workspace/executeCommand", "params": STATS})
    for msg_id in ("no-version", "old-version"):
        assert error_of(client.response(msg_id))["code"] == INVALID_REQUEST

    def unaddressed() -> list[dict]:
        return [m for m in since.messages if "id" in m and m["id"] is None]

    for message in ([], [{"jsonrpc": "2.0", "method": "initialized"}], 42, "text", None,
                    {"jsonrpc": "2.0", "id": {"an": "object"}, "method": "shutdown"},
                    {"jsonrpc": "2.0", "id": 5, "method": 5}, {"jsonrpc": "2.0"}):
        before = len(unaddressed())
        client.send(json.dumps(message))
        client.wait(lambda m, n=before: len(unaddressed()) > n, what=f"no answer to {message!r}")
    assert [m["error"]["code"] for m in unaddressed()] == [INVALID_REQUEST] * 8
    assert_still_serving(client)        # the batch's shutdown was not run
    assert_clean_errors(client)


def test_deeply_nested_params_get_an_answer(running):
    client = running.client
    for depth in (200, 100_000):
        params = {"command": "codeparrot.stats", "arguments": []}
        body = json.dumps({"jsonrpc": "2.0", "id": f"deep{depth}", "method": "workspace/executeCommand",
                           "params": params})
        client.send(body.replace("[]", "[" * depth + "]" * depth))
    assert "result" in client.response("deep200")
    assert error_of(client.response("deep100000"))["code"] == INVALID_REQUEST
    assert_still_serving(client)
    assert_clean_errors(client)


def test_params_that_do_not_fit_the_schema_get_invalid_params(running):
    reply = running.client.call("textDocument/inlineCompletion", {"textDocument": {"uri": 5}, "position": "x"})
    assert error_of(reply)["code"] == INVALID_PARAMS
    assert_still_serving(running.client)
    assert_clean_errors(running.client)


# -- the lifecycle ----------------------------------------------------------------------------------
def test_before_initialize_requests_get_server_not_initialized_and_notifications_are_dropped(served):
    client = served.client
    reply = client.call("textDocument/inlineCompletion", inline_params(URI, 0, 0))
    assert error_of(reply)["code"] == SERVER_NOT_INITIALIZED
    assert error_of(client.call("workspace/executeCommand", STATS))["code"] == SERVER_NOT_INITIALIZED
    open_document(client, URI, TEXT)              # dropped: not open after initialize
    assert "result" in served.initialize()
    reply = client.call("textDocument/inlineCompletion", inline_params(URI, 5, 11))
    assert error_of(reply)["code"] == INVALID_PARAMS and "unknown document" in reply["error"]["message"]
    assert_clean_errors(client)


def test_a_second_initialize_is_refused_and_open_documents_stay(served):
    client = served.client
    assert "result" in served.initialize()
    open_document(client, URI, TEXT)
    again = initialize(client, served.token)
    assert error_of(again)["code"] == INVALID_REQUEST
    reply = client.call("textDocument/inlineCompletion", inline_params(URI, 5, 11))
    assert "items" in reply["result"]
    assert_still_serving(client)


def test_after_shutdown_requests_and_initialize_get_invalid_request(served):
    client = served.client
    served.initialize()
    reply = client.call("shutdown")
    assert "result" in reply and reply["result"] is None
    for method, params in (("workspace/executeCommand", STATS),
                           ("textDocument/inlineCompletion", inline_params(URI, 0, 0)),
                           ("initialize", {"capabilities": {}}), ("shutdown", None)):
        assert error_of(client.call(method, params))["code"] == INVALID_REQUEST
    client.notify("exit")
    assert client.wait_closed()
    if served.kind == "stdio":
        assert served.proc.wait(60) == 0
    assert_clean_errors(client)


def test_exit_without_shutdown_exits_1_over_stdio_and_ends_only_the_session_over_tcp(served):
    served.initialize()
    open_document(served.client, URI, TEXT)
    served.client.notify("exit")
    assert served.client.wait_closed()
    if served.kind == "stdio":
        assert served.proc.wait(60) == 1
        return
    assert served.proc.poll() is None             # the server goes on listening
    other = served.connect()
    try:
        assert "result" in served.initialize(other)
        reply = other.call("textDocument/inlineCompletion", inline_params(URI, 5, 11))
        assert error_of(reply)["code"] == INVALID_PARAMS     # the last session's document is not here
    finally:
        other.close()


def test_exit_before_initialize_exits_1():
    with stdio_server() as (proc, client):
        client.notify("exit")
        assert proc.wait(60) == 1


# -- an internal error, injected ---------------------------------------------------------------------
class _Capture:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def messages(self) -> list[dict]:
        out, rest = [], self.data
        while rest:
            head, _, rest = rest.partition(b"\r\n\r\n")
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            out.append(json.loads(rest[:n]))
            rest = rest[n:]
        return out


async def test_an_internal_error_reply_has_no_traceback_and_the_log_keeps_it(caplog, tmp_path):
    """A fault injected into a command (no real handler is known to fail): the client gets a
    generic message, the log gets the exception and its traceback."""
    from codeparrot_ls.framing import Frame
    from codeparrot_ls.server import new_server

    server = new_server()
    secret = str(tmp_path / "secret" / "source.py")

    @server.command("test.fail")
    def fail(ls, *args):
        raise FileNotFoundError(2, "No such file or directory", secret)

    out = _Capture()
    server.protocol.set_writer(out)
    for message in ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                     "params": {"capabilities": {}, "initializationOptions": {"model": str(tmp_path / "none")}}},
                    {"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {"command": "test.fail"}}):
        server.protocol.receive(Frame(json.dumps(message).encode()))
    server.end_session()
    reply = next(m for m in out.messages() if m.get("id") == 2)
    assert reply["error"] == {"code": -32603, "message": "internal error; the server log has the details"}
    assert secret in caplog.text and "Traceback" in caplog.text and ", in fail" in caplog.text
