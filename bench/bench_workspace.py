"""The workspace context measured through the real LSP over stdio (`codeparrot-ls`, the shipped
default model unless --model).

1. Latency: a held-out repository is the workspace (--repo). Positions are drawn on lines that
   use a name another module of it defines (the evaluation's cross-file lines), cut at a random
   column; the file is opened as an editor would (its real path, so the server knows where it
   sits in the workspace) and one automatic inline completion is asked with `workspaceContext`
   on and one with it off (their order alternates). Client round trip p50 / p95, and the ratio
   on / off, all in the same run.
2. Scale: a synthetic workspace of --files modules (packages of 100 modules, each importing from
   three siblings, ~850 bytes). A server starts on it and is asked for completions in one of its
   modules every 100 ms while the index builds and as many after: p50 of both, the build time
   the server reports, and the server's RSS against a second server started with
   `workspaceContext` off on the same folder. The index alone is also built in this process
   under tracemalloc (its Python heap after the build).

    python bench/bench_workspace.py [--repo /work/runs/heldout/src/werkzeug] [--positions 40] [--files 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_server import pct, server_rss_kb  # noqa: E402
from lsprotocol import types as T  # noqa: E402
from pytest_lsp.client import make_test_lsp_client  # noqa: E402

from codeparrot_ls.repo_context import RepoContext  # noqa: E402
from codeparrot_ls.workspace import WorkspaceIndex  # noqa: E402

CAPS = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(inline_completion=T.InlineCompletionClientCapabilities()))


class Client:
    def __init__(self):
        self.lsp = make_test_lsp_client()
        self.statuses: list = []
        self.lsp.feature("$/codeparrot/status")(lambda ls, p: self.statuses.append(p))

    async def start(self, model: str | None, root: Path, settings: dict, threads: int) -> None:
        args = ["--threads", str(threads), "--log-level", "WARNING"] + (["--model", model] if model else [])
        await self.lsp.start_io(sys.executable, "-m", "codeparrot_ls.cli", *args)
        await self.lsp.initialize_session(T.InitializeParams(
            capabilities=CAPS, initialization_options=settings, root_uri=root.as_uri(),
            workspace_folders=[T.WorkspaceFolder(root.as_uri(), root.name)]))
        while not self.statuses or self.statuses[-1].state == "loading":
            await asyncio.sleep(0.01)

    async def stats(self) -> dict:
        return await self.lsp.workspace_execute_command_async(T.ExecuteCommandParams("codeparrot.stats"))

    async def index_ready(self) -> dict:
        while (w := (await self.stats())["workspace"])["state"] != "ready":
            if w["state"] not in ("empty", "building"):
                raise RuntimeError(f"the server builds no workspace index: {w}")
            await asyncio.sleep(0.05)
        return w

    def open(self, path: Path, text: str) -> None:
        self.lsp.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(path.as_uri(), "python", 1, text)))

    def close_doc(self, path: Path) -> None:
        self.lsp.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(path.as_uri())))

    def configure(self, settings: dict) -> None:
        self.lsp.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings))

    async def complete_ms(self, path: Path, line: int, col: int) -> float:
        params = T.InlineCompletionParams(
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
            text_document=T.TextDocumentIdentifier(path.as_uri()), position=T.Position(line, col))
        t0 = time.perf_counter()
        await self.lsp.text_document_inline_completion_async(params)
        return (time.perf_counter() - t0) * 1e3

    async def close(self) -> None:
        await self.lsp.shutdown_session()
        await self.lsp.stop()


def cross_file_positions(repo: Path, n: int, seed: int) -> list[tuple[Path, str, int, int]]:
    index = WorkspaceIndex()
    index.start([str(repo.resolve())])
    index.wait()
    ctx = RepoContext(index)
    candidates = []
    for path in sorted(index.paths()):
        text = Path(path).read_text(encoding="utf-8")
        candidates += [(Path(path), text, i) for i in ctx.cross_module_lines(Path(path).as_uri(), text)]
    rng = random.Random(seed)
    out = []
    for path, text, i in rng.sample(candidates, min(n, len(candidates))):
        lines = text.split("\n")
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        col = rng.randint(indent + 1, len(line.rstrip()))
        lines[i] = line[:col]
        out.append((path, "\n".join(lines), i, len(line[:col].encode("utf-16-le")) // 2))
    return out


async def measure_latency(model, repo: Path, n: int, seed: int, threads: int) -> dict:
    positions = cross_file_positions(repo, n, seed)
    c = Client()
    await c.start(model, repo.resolve(), {"maxNewTokens": 48, "workspaceContext": True}, threads)
    index = await c.index_ready()
    on, off, definitions = [], [], []
    for k, (path, text, line, col) in enumerate(positions):
        c.open(path, text)
        await c.stats()                       # the didOpen is taken in before the timed request
        for enabled in ((True, False) if k % 2 == 0 else (False, True)):
            c.configure({"workspaceContext": enabled})
            await c.stats()
            ms = await c.complete_ms(path, line, col)
            (on if enabled else off).append(ms)
            if enabled:
                definitions.append((await c.stats())["completer"]["last_definitions"])
        c.close_doc(path)
    await c.close()
    summary = lambda v: {"p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "mean_ms": statistics.fmean(v)}  # noqa: E731
    return {"repo": str(repo), "positions": len(positions), "index": index, "with_workspace": summary(on),
            "without_workspace": summary(off), "ratio_p50": pct(on, 0.5) / pct(off, 0.5),
            "ratio_p95": pct(on, 0.95) / pct(off, 0.95), "mean_definitions": statistics.fmean(definitions)}


def synthetic_workspace(root: Path, files: int) -> int:
    """`files` modules in packages of 100; each imports three siblings. Returns bytes written."""
    total = 0
    for k in range(files):
        pkg, mod = divmod(k, 100)
        d = root / f"pkg{pkg:03d}"
        if mod == 0:
            d.mkdir(parents=True, exist_ok=True)
            (d / "__init__.py").write_text(f'"""Package {pkg}."""\n')
        siblings = [(mod + j) % 100 for j in (1, 7, 31)]
        imports = "".join(f"from .mod{s:02d} import helper_{s}_0, Record{s}\n" for s in siblings)
        body = "".join(
            f"\n\ndef helper_{mod}_{i}(value, scale={i}, *, strict=False):\n"
            f"    total = helper_{siblings[i % 3]}_0(value) * scale\n    return total + LIMIT_{mod}\n"
            for i in range(4))
        cls = (f"\n\nclass Record{mod}:\n    kind = 'record{mod}'\n\n    def __init__(self, name, size=0):\n"
               f"        self.name = name\n        self.size = size\n\n    def grow(self, by=1):\n"
               f"        self.size += by\n        return Record{siblings[0]}(self.name)\n")
        text = f'"""Module {k}."""\n{imports}\nLIMIT_{mod} = {k}\n{body}{cls}'
        (d / f"mod{mod:02d}.py").write_text(text)
        total += len(text)
    return total


async def measure_scale(model, files: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        written = synthetic_workspace(root, files)
        write_s = time.perf_counter() - t0
        pkg, mod = divmod(files // 2, 100)
        doc = root / f"pkg{pkg:03d}" / f"mod{mod:02d}.py"
        text = doc.read_text()
        lines = text.split("\n")
        spots = [(i, len(ln)) for i, ln in enumerate(lines) if ln.startswith("    total = ")]

        # The index alone, in this process.
        tracemalloc.start()
        index = WorkspaceIndex()
        t0 = time.perf_counter()
        index.start([str(root)])
        index.wait()
        in_process_s = time.perf_counter() - t0
        heap_mb = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        in_process = {**index.stats(), "seconds": in_process_s, "python_heap_mb": heap_mb}
        index.close()
        del index

        out = {"files": files, "bytes_written": written, "write_s": write_s, "in_process": in_process}
        for enabled in (False, True):
            subprocess.run(["sync"], check=False)
            c = Client()
            await c.start(model, root, {"maxNewTokens": 16, "workspaceContext": enabled}, threads)
            c.open(doc, text)
            during, after, k = [], [], 0
            while True:
                w = (await c.stats())["workspace"]
                building = w.get("state") == "building"
                line, col = spots[k % len(spots)]
                k += 1
                ms = await c.complete_ms(doc, line, col)
                if enabled and building:
                    during.append(ms)
                elif len(after) < max(len(during), 10):
                    after.append(ms)
                else:
                    break
                await asyncio.sleep(0.1)
            w = (await c.stats())["workspace"]
            out["with_workspace" if enabled else "without_workspace"] = {
                "rss_mb": server_rss_kb(c) / 1024, "index": w, "requests_during_build": len(during),
                "during_build_p50_ms": pct(during, 0.5) if during else None,
                "after_build_p50_ms": pct(after, 0.5)}
            await c.close()
        on, off = out["with_workspace"], out["without_workspace"]
        out["index_rss_mb"] = on["rss_mb"] - off["rss_mb"]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    ap.add_argument("--repo", default="/work/runs/heldout/src/werkzeug")
    ap.add_argument("--positions", type=int, default=40)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=["latency", "scale"], default=None)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    report = {"cpu": cpu, "threads": args.threads}
    if args.skip != "latency":
        report["latency"] = asyncio.run(measure_latency(args.model, Path(args.repo), args.positions, args.seed,
                                                        args.threads))
        print(json.dumps(report["latency"], indent=1), flush=True)
    if args.skip != "scale":
        report["scale"] = asyncio.run(measure_scale(args.model, args.files, args.threads))
        print(json.dumps(report["scale"], indent=1), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
