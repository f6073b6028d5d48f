"""Raw LSP for tests that send what no well-behaved client would: bytes written to the real
server's stdin or to a real TCP socket, the server's frames read back on a thread."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "codeparrot_ls.cli"]
WAIT_S = 120.0                 # a guard against a hang (on a busy machine), not a speed expectation


def frame(body: bytes | str | dict | list, length: int | None = None, header: bytes = b"Content-Length: ") -> bytes:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    return header + str(len(body) if length is None else length).encode() + b"\r\n\r\n" + body


class RawLsp:
    """One connection to the server: send anything, read every message the server sends."""

    def __init__(self, write, read, close, hang_up, first_id: int = 1) -> None:
        self._write, self._read, self._close, self._hang_up = write, read, close, hang_up
        self.received: list[dict] = []
        self.closed = False               # the server closed its end
        self._cond = threading.Condition()
        self._ids = itertools.count(first_id)
        threading.Thread(target=self._pump, daemon=True).start()

    # -- sending --------------------------------------------------------------------------------
    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def send(self, message, length: int | None = None) -> None:
        self.send_bytes(frame(message, length))

    def request(self, method: str, params=None, msg_id=None):
        msg_id = next(self._ids) if msg_id is None else msg_id
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return msg_id

    def notify(self, method: str, params=None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def call(self, method: str, params=None) -> dict:
        """A request and its response."""
        return self.response(self.request(method, params))

    # -- receiving ------------------------------------------------------------------------------
    def responses(self, msg_id) -> list[dict]:
        with self._cond:
            return [m for m in self.received if "method" not in m and m.get("id") == msg_id]

    def response(self, msg_id, timeout: float = WAIT_S) -> dict:
        return self.wait(lambda m: "method" not in m and m.get("id") == msg_id, timeout,
                         f"no response to {msg_id!r}")

    def wait(self, predicate, timeout: float = WAIT_S, what: str = "no such message") -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.received:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"{what}; received: {self.received[-10:]}")
                self._cond.wait(left)

    def wait_closed(self, timeout: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.closed and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self.closed

    def close(self) -> None:
        self._close()

    def hang_up(self) -> None:
        """Close the sending side only, as a client that goes away; the server's answer to that
        (closing its side) is then seen by `wait_closed`."""
        self._hang_up()

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                data = self._read()
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            buf += data
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    break
                headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
                n = int(headers[b"Content-Length"])      # the server's frames are always well formed
                if len(rest) < n:
                    break
                message = json.loads(rest[:n])
                buf = rest[n:]
                with self._cond:
                    self.received.append(message)
                    self._cond.notify_all()


def server_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}


@contextlib.contextmanager
def stdio_server(*args: str, log_file: Path | None = None):
    """The real server on pipes; yields (process, RawLsp)."""
    stderr = open(log_file, "wb") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen([*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            env=server_env())

    def write(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    client = RawLsp(write, lambda: os.read(proc.stdout.fileno(), 65536), proc.stdin.close, proc.stdin.close)
    try:
        yield proc, client
    finally:
        stop(proc, stderr if log_file else None)


def stop(proc: subprocess.Popen, log=None) -> None:
    """Kill the server if it still runs, reap it, close its log."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT_S)
    if log is not None:
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tcp_server(*args: str, token_file: Path, log_file: Path | None = None):
    """The real server listening on a free loopback port; yields (process, port, token)."""
    port = free_port()
    stderr = open(log_file, "wb") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen([*CLI, *args, "--tcp", "--port", str(port), "--token-file", str(token_file)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=server_env())
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.05)
        yield proc, port, token_file.read_text().strip()
    finally:
        stop(proc, stderr if log_file else None)


def tcp_client(port: int, first_id: int = 1) -> RawLsp:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(None)

    def close() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    return RawLsp(sock.sendall, lambda: sock.recv(65536), close, lambda: sock.shutdown(socket.SHUT_WR), first_id)


def initialize(client: RawLsp, token: str | None = None, **options) -> dict:
    """initialize + initialized; returns the initialize response."""
    if token is not None:
        options["token"] = token
    params = {"processId": None, "rootUri": None, "capabilities": {
        "textDocument": {"inlineCompletion": {}}}, "initializationOptions": options}
    reply = client.call("initialize", params)
    if "result" in reply:
        client.notify("initialized", {})
    return reply


def open_document(client: RawLsp, uri: str, text: str) -> None:
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": text}})


def inline_params(uri: str, line: int, character: int, invoked: bool = False) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1 if invoked else 2}}
