"""Two versions of the language server on one model, through the real LSP, in one run.

Each server runs from its own source tree (`--before`: e.g. `git worktree add /tmp/before REV`;
`--after`: this tree by default). Both get the same positions as `bench_server.py` (held-out
standard-library files, the cursor's line cut at a random column, the last few documents open
as tabs) and the requests alternate between them, first one then the other, so a machine whose
speed drifts during the run slows both alike. Prints each server's p50 / p95 and the median of
the per-position ratio after / before.

    python bench/bench_server_ab.py --model DIR --before /tmp/before [--after .] [--positions 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import CLIENT_CAPS, SETTINGS, Client, pct, request_at, sample_positions  # noqa: E402
from lsprotocol import types as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class TreeClient(Client):
    """A client whose server is `python -m codeparrot_ls.cli` started in `tree` (its package wins
    over an installed one: `-m` puts the working directory first on the path)."""

    async def start_in(self, tree: Path, model: Path, threads: int) -> None:
        await self.lsp.start_io(sys.executable, "-m", "codeparrot_ls.cli", "--model", str(model.resolve()),
                                "--threads", str(threads), "--log-level", "WARNING", cwd=str(tree))
        await self.lsp.initialize_session(T.InitializeParams(capabilities=CLIENT_CAPS, initialization_options=SETTINGS))


async def measure(trees: dict[str, Path], model: Path, positions, threads: int) -> dict[str, list[float]]:
    clients = {name: TreeClient() for name in trees}
    for name, client in clients.items():
        await client.start_in(trees[name], model, threads)
        await client.ready()
    latency: dict[str, list[float]] = {name: [] for name in trees}
    names = list(trees)
    for i, position in enumerate(positions):
        for name in (names if i % 2 == 0 else names[::-1]):
            ms, _ = await request_at(clients[name], i, position)
            latency[name].append(ms)
    for client in clients.values():
        await client.close()
    return latency


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an exported model folder (ONNX)")
    ap.add_argument("--before", type=Path, required=True, help="source tree of the first server")
    ap.add_argument("--after", type=Path, default=ROOT, help="source tree of the second server (default: this one)")
    ap.add_argument("--positions", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write every latency here")
    args = ap.parse_args(argv)
    for tree in (args.before, args.after):
        if not (tree / "codeparrot_ls" / "cli.py").is_file():
            ap.error(f"{tree} is not a codeparrot-ls source tree (no codeparrot_ls/cli.py)")
    trees = {"before": args.before, "after": args.after}
    latency = asyncio.run(measure(trees, args.model, sample_positions(args.positions, args.seed), args.threads))
    for name, values in latency.items():
        print(f"{name:7} p50 {pct(values, .5):6.1f} ms   p95 {pct(values, .95):6.1f} ms   ({trees[name]})")
    ratios = [a / b for b, a in zip(latency["before"], latency["after"])]
    print(f"after / before per position: median {statistics.median(ratios):.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "latency_ms": latency}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
