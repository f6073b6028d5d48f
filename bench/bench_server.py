"""The language server measured through the real LSP over stdio, against transformers `generate`.

Model: the "tiny" preset (4 layers x 256, 4 heads) with n_positions enlarged to 1088 so that a
~1,000-token context fits, RANDOM weights (latency does not depend on what the weights are),
a byte-level BPE (vocab 8192) trained here on the first 120 standard-library modules, exported
to ONNX int8 by `codeparrot export`. Positions are sampled from other (held-out) standard-library
files: the document is the file with the cursor's line cut at a random column.

Measured, all in one run:
1. automatic inline completions (greedy, <= 48 new tokens, contextTokens 1024): the client's
   round-trip latency, p50 / p95;
2. baseline: `GPT2LMHeadModel.generate` (KV cache, greedy) on the same checkpoint and the very
   same prompt ids, generating as many tokens as the server's engine did at that position
   (prompts and counts are captured by running the server's own `Completer` in this process),
   timed right after the server's answer at each position so both see the same machine load;
3. typing along a shown suggestion (one character per didChange, then a request): p50;
4. cold start: process spawn -> initialize -> model ready -> first completion answered;
5. 1,000 rapid requests (each after a didChange; every 4th cancelled with $/cancelRequest)
   without waiting for answers: server RSS before / after, jobs skipped, time to drain.

    python bench/bench_server.py [--positions 60] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsprotocol import types as T  # noqa: E402
from pytest_lsp.client import make_test_lsp_client  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
ALL_FILES = sorted(STDLIB.glob("*.py"))
HELD_OUT = [p for p in ALL_FILES[120:] if p.stat().st_size > 20_000]
OPEN_TABS = 5
SETTINGS = {"maxNewTokens": 48, "contextTokens": 1024}
CLIENT_CAPS = T.ClientCapabilities(
    text_document=T.TextDocumentClientCapabilities(inline_completion=T.InlineCompletionClientCapabilities()))


def build_model_folder(root: Path) -> tuple[Path, Path]:
    """The generation benchmark's random tiny model (n_positions 1088), exported to int8."""
    from bench_generate import build_model_folder as build

    return build(root, threads=0, optimize=False)


def sample_positions(n: int, seed: int, files: list[Path] | None = None) -> list[tuple[str, int, int]]:
    """(document text, line, UTF-16 column): a held-out file (of `files`, default the held-out
    standard-library modules) cut mid-line, >= ~4,000 chars before."""
    rng = random.Random(seed)
    files = files or HELD_OUT
    out = []
    while len(out) < n:
        text = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        starts = [i for i in range(len(lines)) if lines[i].strip() and sum(map(len, lines[:i])) > 4000]
        if not starts:
            continue
        i = rng.choice(starts)
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        col = rng.randint(indent + 1, len(line))
        lines[i] = line[:col]
        out.append(("\n".join(lines), i, len(line[:col].encode("utf-16-le")) // 2))
    return out


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


class Client:
    def __init__(self) -> None:
        self.lsp = make_test_lsp_client()
        self.statuses: list = []
        self.lsp.feature("$/codeparrot/status")(lambda ls, p: self.statuses.append(p))

    async def start(self, onnx_dir: Path, threads: int) -> None:
        await self.lsp.start_io(sys.executable, "-m", "codeparrot_ls.cli", "--model", str(onnx_dir),
                                "--threads", str(threads), "--log-level", "WARNING")
        await self.lsp.initialize_session(T.InitializeParams(capabilities=CLIENT_CAPS, initialization_options=SETTINGS))

    async def ready(self) -> None:
        while not self.statuses or self.statuses[-1].state == "loading":
            await asyncio.sleep(0.005)
        assert self.statuses[-1].state == "ready", self.statuses[-1]

    def open(self, uri: str, text: str) -> None:
        self.lsp.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(uri, "python", 1, text)))

    def close_doc(self, uri: str) -> None:
        self.lsp.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(uri)))

    def request(self, uri: str, line: int, col: int, msg_id: str | None = None):
        params = T.InlineCompletionParams(
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
            text_document=T.TextDocumentIdentifier(uri), position=T.Position(line, col))
        return asyncio.ensure_future(self.lsp.protocol.send_request_async(T.TEXT_DOCUMENT_INLINE_COMPLETION, params,
                                                                          msg_id=msg_id))

    def type_char(self, uri: str, version: int, line: int, col: int, char: str) -> None:
        pos = T.Position(line, col)
        self.lsp.text_document_did_change(T.DidChangeTextDocumentParams(
            T.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [T.TextDocumentContentChangePartial(range=T.Range(pos, pos), text=char)]))

    async def stats(self) -> dict:
        return await self.lsp.workspace_execute_command_async(T.ExecuteCommandParams("codeparrot.stats"))

    async def close(self) -> None:
        await self.lsp.shutdown_session()
        await self.lsp.stop()


def server_rss_kb(client: Client) -> int:
    for line in Path(f"/proc/{client.lsp._server.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def request_at(c: Client, i: int, position: tuple[str, int, int]):
    """(round-trip ms, result) of the automatic completion at positions[i], as in an editor with
    a few tabs: its document is opened first and the last OPEN_TABS stay open (their snippets
    go into the prompt as other-file context)."""
    text, line, col = position
    c.open(f"file:///held-out/{i}.py", text)
    if i >= OPEN_TABS:
        c.close_doc(f"file:///held-out/{i - OPEN_TABS}.py")
    # Let the server take in the ~100 KB didOpen first: an editor opens a file once, then
    # asks for completions; the request's own latency is what is measured.
    await c.stats()
    t0 = time.perf_counter()
    result = await c.request(f"file:///held-out/{i}.py", line, col)
    return (time.perf_counter() - t0) * 1e3, result


async def measure_server(onnx_dir: Path, positions, threads: int, baseline: Generate, n_bursts: int = 2) -> dict:
    c = Client()
    await c.start(onnx_dir, threads)
    await c.ready()
    latencies, suggestions, generate_ms = [], [], []
    for i, position in enumerate(positions):
        ms, result = await request_at(c, i, position)
        latencies.append(ms)
        # The baseline right after, at the same position, so both see the same machine load.
        generate_ms.append(baseline.time(i))
        suggestions.append(result.items[0].insert_text if result.items else "")

    # Typing along: each shown suggestion's first characters, one didChange + request per character.
    typing, from_cache = [], 0
    for i in range(max(0, len(positions) - OPEN_TABS), len(positions)):
        c.close_doc(f"file:///held-out/{i}.py")
    for i, (text, line, col) in enumerate(positions):
        uri, typed = f"file:///held-out/{i}.py", suggestions[i][:6]
        c.open(uri, text)
        for k, char in enumerate(typed):
            if char == "\n":
                break
            c.type_char(uri, 2 + k, line, col + k, char)
            t0 = time.perf_counter()
            result = await c.request(uri, line, col + k + 1)
            typing.append((time.perf_counter() - t0) * 1e3)
            from_cache += bool(result.items and result.items[0].command.arguments[0]["fromCache"])
        c.close_doc(uri)

    # 1,000 rapid requests, `n_bursts` times (the first warms up buffers): type into a fresh copy of one
    # document, never wait for answers, cancel every 4th request.
    text, line, col = positions[0]
    bursts = []
    for b in range(n_bursts):
        uri = f"file:///held-out/burst-{b}.py"
        c.open(uri, text)
        await c.request(uri, line, col)
        rss_before = server_rss_kb(c)
        before = (await c.stats())["scheduler"]
        t0 = time.perf_counter()
        pending = []
        for k in range(1000):
            c.type_char(uri, 2 + k, line, col + k, "x")
            pending.append(c.request(uri, line, col + k + 1, msg_id=f"burst-{b}-{k}"))
            if k % 4 == 3:
                await asyncio.sleep(0)       # the request task sends it before its cancellation goes out
                c.lsp.protocol.notify(T.CANCEL_REQUEST, T.CancelParams(id=f"burst-{b}-{k}"))
            if k % 50 == 49:
                await asyncio.sleep(0)       # let the client's writer flush, as an editor would
        sent_s = time.perf_counter() - t0
        results = await asyncio.gather(*pending, return_exceptions=True)
        drain_s = time.perf_counter() - t0
        after = (await c.stats())["scheduler"]
        delta = {k: after[k] - before[k] for k in ("requests", "done", "cancelled", "skipped", "errors")}
        bursts.append({"sent_s": sent_s, "drain_s": drain_s, "rss_before_kb": rss_before,
                       "rss_after_kb": server_rss_kb(c),
                       "cancelled_answers": sum(isinstance(r, Exception) for r in results), **delta})
    await c.close()
    return {"latency_ms": latencies, "generate_ms": generate_ms, "typing_ms": typing, "from_cache": from_cache, "suggestions": suggestions,
            "bursts": bursts}


async def measure_cold_start(onnx_dir: Path, position, threads: int) -> dict:
    text, line, col = position
    t0 = time.perf_counter()
    c = Client()
    await c.start(onnx_dir, threads)
    t_init = time.perf_counter()
    c.open("file:///cold.py", text)
    await c.ready()
    t_ready = time.perf_counter()
    await c.request("file:///cold.py", line, col)
    t_first = time.perf_counter()
    await c.close()
    return {"initialize_ms": (t_init - t0) * 1e3, "ready_ms": (t_ready - t0) * 1e3, "first_ms": (t_first - t0) * 1e3}


def capture_prompts(onnx_dir: Path, positions, threads: int) -> list[tuple[list[int], int, float]]:
    """Prompt ids, generated-token count and in-process time of the server's own pipeline at each position."""
    from codeparrot_ls.completion import Completer
    from codeparrot_ls.engine import load_engine
    from codeparrot_ls.positions import locate
    from codeparrot_ls.settings import CompletionSettings

    completer = Completer(load_engine(onnx_dir, threads=threads))
    seen = []
    generate = completer.decoder.generate

    def recording(request):
        gens = generate(request)
        seen.append((list(request.prompt_ids), max(1, len(gens[0].token_ids))))
        return gens

    completer.decoder.generate = recording
    settings = CompletionSettings().updated(SETTINGS)
    out = []
    for i, (text, line, col) in enumerate(positions):
        seen.clear()
        t0 = time.perf_counter()
        completer.complete(f"file:///capture/{i}.py", text, locate(text, line, col).offset, settings, invoked=False)
        out.append((*seen[0], (time.perf_counter() - t0) * 1e3))
    completer.close()
    return out


class Generate:
    """The baseline: `GPT2LMHeadModel.generate` (KV cache, greedy) on the same checkpoint and prompts."""

    def __init__(self, ckpt: Path, prompts, threads: int):
        import torch
        from transformers import GPT2LMHeadModel

        self.torch, self.prompts = torch, prompts
        self.model = GPT2LMHeadModel.from_pretrained(ckpt).eval()
        # Its better thread count on this machine (2 threads can lose to 1 on a busy machine).
        best = None
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            t = statistics.median(self.time(i) for i in range(min(5, len(prompts))))
            if best is None or t < best[1]:
                best = (n, t)
        self.threads = best[0]
        torch.set_num_threads(self.threads)

    def time(self, i: int) -> float:
        ids, n_new, _ = self.prompts[i]
        x = self.torch.tensor([ids])
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=n_new,
                                min_new_tokens=n_new, do_sample=False, use_cache=True, pad_token_id=0)
        return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bursts", type=int, default=2, help="bursts of 1,000 rapid requests (RSS after each)")
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (for the baseline) ...")
    ap.add_argument("--onnx", type=Path, help="... and its export (for the server); default: a random tiny model")
    ap.add_argument("--json", type=Path, help="also write every measurement here (for bench/plots.py)")
    args = ap.parse_args(argv)
    if bool(args.checkpoint) != bool(args.onnx):
        ap.error("--checkpoint and --onnx go together")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.onnx:
            ckpt, onnx_dir = args.checkpoint, args.onnx
        else:
            ckpt, onnx_dir = build_model_folder(Path(tmp))
            print(f"model folder built in {time.perf_counter() - t0:.1f} s")
        positions = sample_positions(args.positions, args.seed)
        prompts = capture_prompts(onnx_dir, positions, args.threads)
        cold = [asyncio.run(measure_cold_start(onnx_dir, positions[i], args.threads)) for i in range(3)]
        baseline = Generate(ckpt, prompts, args.threads)
        server = asyncio.run(measure_server(onnx_dir, positions, args.threads, baseline, args.bursts))

    lat, gen = server["latency_ms"], server["generate_ms"]
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(args.onnx or "random tiny (n_positions 1088)"), "latency_ms": lat, "generate_ms": gen,
            "typing_ms": server["typing_ms"], "cold_start": cold, "bursts": server["bursts"],
            "prompt_tokens": [len(ids) for ids, _, _ in prompts], "new_tokens": [n for _, n, _ in prompts],
            "load_average": os.getloadavg()}, indent=1))
    prompt_tokens = [len(ids) for ids, _, _ in prompts]
    new_tokens = [n for _, n, _ in prompts]
    inproc = [ms for _, _, ms in prompts]
    print(f"\n{len(positions)} positions from {len(HELD_OUT)} held-out stdlib files; prompt tokens median "
          f"{statistics.median(prompt_tokens):.0f} (max {max(prompt_tokens)}), new tokens median "
          f"{statistics.median(new_tokens):.0f} (max {max(new_tokens)}); "
          f"{sum(bool(s) for s in server['suggestions'])} non-empty suggestions")
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"{'LSP inline completion (ONNX int8)':34}{pct(lat, .5):9.1f}{pct(lat, .95):9.1f}")
    print(f"{'same pipeline in-process (no LSP)':34}{pct(inproc, .5):9.1f}{pct(inproc, .95):9.1f}")
    print(f"{'transformers generate':34}{pct(gen, .5):9.1f}{pct(gen, .95):9.1f}   ({baseline.threads} threads)")
    ratios = [g / s for g, s in zip(gen, lat)]
    print(f"speed-up (generate / LSP) per position: median {statistics.median(ratios):.1f}x; "
          f"p50/p50 {pct(gen, .5) / pct(lat, .5):.1f}x")
    t = server["typing_ms"]
    if t:
        print(f"typing along a suggestion: p50 {pct(t, .5):.1f} ms, p95 {pct(t, .95):.1f} ms over {len(t)} keystrokes "
              f"({server['from_cache']} answered from the cache); vs a model run p50: {pct(lat, .5) / pct(t, .5):.0f}x")
    cs = sorted(x["first_ms"] for x in cold)
    print("cold start (spawn -> first completion): " + ", ".join(f"{x['first_ms']:.0f}" for x in cold)
          + f" ms (initialize answered at {cold[0]['initialize_ms']:.0f} ms, ready at {cold[0]['ready_ms']:.0f} ms);"
          f" median {cs[1]:.0f} ms")
    for i, b in enumerate(server["bursts"], start=1):
        print(f"1,000 rapid requests (burst {i}): sent in {b['sent_s']:.2f} s, all answered after {b['drain_s']:.2f} s; "
              f"jobs done {b['done']}, stopped mid-way {b['cancelled']}, skipped before running {b['skipped']}, "
              f"errors {b['errors']}; {b['cancelled_answers']} answered RequestCancelled; server RSS "
              f"{b['rss_before_kb'] / 1024:.1f} -> {b['rss_after_kb'] / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
