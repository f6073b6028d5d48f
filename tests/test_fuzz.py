"""A bounded, seeded fuzz loop against the real server (tiny model), over stdio and TCP: random
malformed frames, documents, edits, positions and settings, interleaved with well-formed
requests. Every well-formed request gets exactly one response, nothing sent in a broken frame
gets more than one (an error), no reply carries a traceback, and the server still answers a
normal request at the end.

CODEPARROT_FUZZ_SEED and CODEPARROT_FUZZ_ROUNDS replay a failure or run longer.
"""

from __future__ import annotations

import json
import os
import random
import string

import pytest
from rawlsp import frame, initialize, stdio_server, tcp_client, tcp_server

SEED = int(os.environ.get("CODEPARROT_FUZZ_SEED", "2087"))
ROUNDS = int(os.environ.get("CODEPARROT_FUZZ_ROUNDS", "200"))
URIS = ["file:///fuzz/a.py", "file:///fuzz/b%20c.py", "untitled:Untitled-1", "file:///fuzz/notes.txt"]
PIECES = ["def f(x):\n", "    return x", "\r\n", "\n", "class A:\n    pass\n", "é", "😀", "\t", "\f", "\u2028",
          "\ud800", "x = [1, 2,", "'''doc", "# comment\n", "", " " * 20, "import os\n", "\x00"]
SETTINGS = {
    "maxNewTokens": [1, 4, 16, 0, -3, "many", None], "numCandidates": [1, 2, 3, 0, "x"],
    "temperature": [0, 0.7, 1.5, -1, "hot"], "topP": [0.5, 1.0, 0, 2], "singleLine": [True, False, 1],
    "fim": [True, False, None, "yes"], "stop": [[], ["\n\n"], "nope", [3]], "contextTokens": [64, 256, 8],
    "timeBudgetMs": [200, 1000, 0], "enabled": [True, False], "tokenHealing": [True, False],
}


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.version = 0
        self.good: list = []           # ids of well-formed requests: exactly one response each
        self.bad: list = []            # ids inside broken frames: at most one response, an error
        self.n = 10_000                # clear of the client's own ids

    def text(self) -> str:
        return "".join(self.rng.choice(PIECES) for _ in range(self.rng.randint(0, 30)))

    def position(self) -> dict:
        r = self.rng
        if r.random() < 0.85:            # mostly inside or just past a small document
            return {"line": r.randint(0, 8), "character": r.randint(0, 30)}
        return {"line": r.choice([40, -1, 2**31 - 1]), "character": r.choice([200, -2, 2**31])}

    def request(self, method: str, params) -> bytes:
        self.n += 1
        self.good.append(self.n)
        return frame({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})

    def notification(self, method: str, params) -> bytes:
        return frame({"jsonrpc": "2.0", "method": method, "params": params})

    def message(self) -> bytes:
        r = self.rng
        uri = r.choice(URIS)
        kind = r.choice(["inline", "inline", "completion", "open", "change", "change", "close", "settings",
                         "stats", "accept", "unknown", "initialize", "cancel", "broken", "broken", "garbage"])
        if kind in ("inline", "completion"):
            params = {"textDocument": {"uri": uri}, "position": self.position()}
            if kind == "inline":
                params["context"] = {"triggerKind": r.choice([1, 2])}
            return self.request(f"textDocument/{kind}" if kind == "completion" else "textDocument/inlineCompletion",
                                params)
        if kind == "open":
            item = {"uri": uri, "languageId": r.choice(["python", "plaintext"]), "version": 1, "text": self.text()}
            return self.notification("textDocument/didOpen", {"textDocument": item})
        if kind == "change":
            self.version += 1
            change = {"text": self.text()}
            if r.random() < 0.8:
                change["range"] = {"start": self.position(), "end": self.position()}
            return self.notification("textDocument/didChange", {
                "textDocument": {"uri": uri, "version": self.version}, "contentChanges": [change]})
        if kind == "close":
            return self.notification("textDocument/didClose", {"textDocument": {"uri": uri}})
        if kind == "settings":
            chosen = {k: r.choice(v) for k, v in r.sample(sorted(SETTINGS.items()), r.randint(1, 4))}
            return self.notification("workspace/didChangeConfiguration",
                                     {"settings": {"codeparrot": chosen} if r.random() < 0.5 else chosen})
        if kind in ("stats", "accept"):
            command = "codeparrot.stats" if kind == "stats" else "codeparrot.acceptCompletion"
            args = r.choice([None, [], [{"uri": uri, "chars": 3}], [1, "two"]])
            return self.request("workspace/executeCommand", {"command": command, "arguments": args})
        if kind == "unknown":
            return self.request(r.choice(["codeparrot/nothing", "textDocument/hover", "$/custom"]), {})
        if kind == "initialize":
            return self.request("initialize", {"capabilities": {}})
        if kind == "cancel":
            return self.notification("$/cancelRequest", {"id": r.choice(self.good or [0])})
        if kind == "garbage":
            return "".join(r.choice(string.ascii_letters + string.digits + '{}[]":, ') for _ in range(r.randint(1, 60))).encode()
        return self.broken()

    def broken(self) -> bytes:
        r = self.rng
        self.n += 1
        self.bad.append(f"bad{self.n}")
        body = json.dumps({"jsonrpc": "2.0", "id": f"bad{self.n}", "method": "workspace/executeCommand",
                           "params": {"command": "codeparrot.stats"}}).encode()
        return r.choice([
            lambda: frame(body, 0), lambda: frame(body, -r.randint(1, 99)), lambda: frame(body, r.randint(1, len(body) - 1)),
            lambda: frame(body, len(body) + r.randint(1, 300)), lambda: b"Content-Length: many\r\n\r\n" + body,
            lambda: frame(body[: r.randint(1, len(body) - 1)]), lambda: frame(body.replace(b"2.0", b"1.0")),
            lambda: frame(b"[" + body + b"]"), lambda: frame(b"[" * 5000 + b"]" * 5000),
        ])()


def run_fuzz(client, rng: random.Random) -> None:
    fuzzer = Fuzzer(rng)
    for _ in range(ROUNDS):
        client.send_bytes(fuzzer.message())
    final = client.request("workspace/executeCommand", {"command": "codeparrot.stats"}, msg_id="final")
    assert "result" in client.response(final), f"seed {SEED}: the server stopped answering"
    for msg_id in fuzzer.good:
        client.response(msg_id)
    for msg_id in fuzzer.good:
        assert len(client.responses(msg_id)) == 1, (SEED, msg_id, client.responses(msg_id))
    for msg_id in fuzzer.bad:
        replies = client.responses(msg_id)
        assert len(replies) <= 1 and all("error" in m for m in replies), (SEED, msg_id, replies)
    for m in client.received:
        assert "Traceback" not in json.dumps(m), (SEED, m)


@pytest.mark.parametrize("transport", ["stdio", "tcp"])
def test_the_server_survives_a_seeded_fuzz_loop(transport, tiny_onnx_dir, tmp_path):
    rng = random.Random(SEED)
    args = ("--model", str(tiny_onnx_dir))
    if transport == "stdio":
        with stdio_server(*args, log_file=tmp_path / "server.log") as (proc, client):
            assert "result" in initialize(client)
            run_fuzz(client, rng)
            assert proc.poll() is None
        return
    with tcp_server(*args, token_file=tmp_path / "token", log_file=tmp_path / "server.log") as (proc, port, token):
        client = tcp_client(port)
        try:
            assert "result" in initialize(client, token)
            run_fuzz(client, rng)
            assert proc.poll() is None
        finally:
            client.close()
