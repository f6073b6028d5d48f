"""The language server on huge documents: answer time and server RSS (from /proc), through the
real LSP over stdio. Each scenario runs in a fresh server process on the given model (default:
the packaged default model), automatic triggers, default settings:

1. one 10 MB line: a request at the end, one at column 3; then didClose;
2. a 200,000-line document (real code repeated): a request in the middle, one at the end; didClose;
3. typing 20 characters at the end of a 2 MB line, a request after each; didClose;
4. 500 documents of 100 KB opened and closed, three rounds.

RSS is read after each step; "baseline" is after initialize + one request on a small document.
A request that takes longer than --timeout seconds is reported as such and ends its scenario.

    python bench/bench_big_input.py [--model DIR] [--timeout 120] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsprotocol import types as T  # noqa: E402
from pytest_lsp.client import make_test_lsp_client  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
CAPS = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(inline_completion=T.InlineCompletionClientCapabilities()))
SMALL = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return "


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, model: str, timeout: float):
        self.model, self.timeout, self.version = model, timeout, {}

    async def __aenter__(self):
        self.client = make_test_lsp_client()
        env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
        await self.client.start_io(sys.executable, "-m", "codeparrot_ls.cli", "--model", self.model, env=env)
        self.pid = self.client._server.pid
        await self.client.initialize_session(T.InitializeParams(capabilities=CAPS))
        await asyncio.sleep(0.5)
        self.open("file:///small.py", SMALL)
        await self.request("file:///small.py", SMALL.count("\n"), len(SMALL.split("\n")[-1]))
        self.close("file:///small.py")
        return self

    async def __aexit__(self, *exc):
        self.client._server.kill()
        await self.client.stop()

    def open(self, uri, text):
        self.version[uri] = 1
        self.client.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(uri, "python", 1, text)))

    def close(self, uri):
        self.client.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(uri)))

    def insert(self, uri, line, col, text):
        self.version[uri] += 1
        pos = T.Position(line, col)
        change = T.TextDocumentContentChangePartial(range=T.Range(pos, pos), text=text)
        self.client.text_document_did_change(T.DidChangeTextDocumentParams(
            T.VersionedTextDocumentIdentifier(version=self.version[uri], uri=uri), [change]))

    async def request(self, uri, line, col) -> float:
        params = T.InlineCompletionParams(
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
            text_document=T.TextDocumentIdentifier(uri), position=T.Position(line, col))
        t0 = time.perf_counter()
        await asyncio.wait_for(self.client.text_document_inline_completion_async(params), self.timeout)
        return (time.perf_counter() - t0) * 1e3

    async def settle(self) -> float:
        """RSS once the server has handled everything sent so far (a stats round trip)."""
        await asyncio.wait_for(self.client.workspace_execute_command_async(
            T.ExecuteCommandParams("codeparrot.stats")), self.timeout)
        return rss_mb(self.pid)


async def one_line(s: Server, out):
    text = "x = [" + "1, " * (10_000_000 // 3) + "]"
    s.open("file:///line.py", text)
    out("after didOpen", rss=await s.settle())
    out("request at the end", ms=await s.request("file:///line.py", 0, len(text)), rss=rss_mb(s.pid))
    out("request at column 3", ms=await s.request("file:///line.py", 0, 3), rss=rss_mb(s.pid))
    s.close("file:///line.py")
    out("after didClose", rss=await s.settle())


async def many_lines(s: Server, out):
    lines = CODE.split("\n")
    text = "\n".join(lines[i % len(lines)] for i in range(200_000))
    s.open("file:///lines.py", text)
    out("after didOpen", rss=await s.settle())
    out("request in the middle", ms=await s.request("file:///lines.py", 100_000, 0), rss=rss_mb(s.pid))
    last = text.rsplit("\n", 1)[-1]
    out("request at the end", ms=await s.request("file:///lines.py", 199_999, len(last)), rss=rss_mb(s.pid))
    s.close("file:///lines.py")
    out("after didClose", rss=await s.settle())


async def typing(s: Server, out):
    text = "y = " + "'ab', " * (2_000_000 // 6)
    s.open("file:///typing.py", text)
    out("after didOpen", rss=await s.settle())
    col, times = len(text), []
    for ch in "foo(bar, baz) + quux":
        s.insert("file:///typing.py", 0, col, ch)
        col += 1
        times.append(await s.request("file:///typing.py", 0, col))
    out("20 keystrokes, request after each (max)", ms=max(times), rss=rss_mb(s.pid))
    s.close("file:///typing.py")
    out("after didClose", rss=await s.settle())


async def open_close(s: Server, out):
    body = (CODE * (100_000 // len(CODE) + 1))[:100_000]
    for r in range(3):
        for i in range(500):
            uri = f"file:///many/m{i}.py"
            s.open(uri, f"# {r} {i}\n" + body)
            s.close(uri)
        out(f"round {r + 1}: 500 x 100 KB opened and closed", rss=await s.settle())


SCENARIOS = {"one_line": one_line, "many_lines": many_lines, "typing": typing, "open_close": open_close}


async def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "codeparrot_ls/models/default"))
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--only", choices=SCENARIOS)
    args = p.parse_args(argv)
    for name, scenario in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        async with Server(args.model, args.timeout) as s:
            base = rss_mb(s.pid)
            print(f"== {name}: baseline RSS {base:.0f} MB", flush=True)

            def out(step, ms=None, rss=None):
                t = f"{ms:9.0f} ms" if ms is not None else " " * 12
                print(f"  {step:42s} {t}   RSS {rss:6.0f} MB ({rss - base:+.0f})", flush=True)
            try:
                await scenario(s, out)
            except asyncio.TimeoutError:
                print(f"  a request took more than {args.timeout:.0f} s (RSS {rss_mb(s.pid):.0f} MB): stopped",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
