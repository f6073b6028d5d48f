"""Pre-tokenization variants against GPT-2's, trained and measured in the same run.

    python bench/bench_tokenizer.py [--vocab-sizes 8192 32768] [--heldout DIR] [--json OUT]

Trains one byte-level BPE per variant and vocabulary size on the running interpreter's
standard library (no site-packages, no test folders) and measures characters per token
on held-out Python that is not in it: the source of werkzeug 3.1.3 (a package that is no
dependency of this project), downloaded once with `pip download` into a cache folder.
Prints chars/token and training time as ratios to the GPT-2-style baseline. Training
time is given as wall time and as process CPU time (all threads): on a shared machine the
CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.tokenizer import VARIANTS, keyword_report, measure, python_files, train_tokenizer  # noqa: E402

HELDOUT_PACKAGE = "werkzeug==3.1.3"
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test"}


def stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in python_files(root):
        if SKIP_PARTS & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def heldout_dir(cache: Path) -> Path:
    """werkzeug's source, unpacked from its wheel (downloaded on the first run only)."""
    target = cache / HELDOUT_PACKAGE.replace("==", "-")
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", HELDOUT_PACKAGE, "--no-deps",
                        "--only-binary=:all:", "-q", "-d", str(cache)], check=True)
        wheel = next(cache.glob(HELDOUT_PACKAGE.replace("==", "-") + "-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target, [n for n in zf.namelist() if n.endswith(".py")])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--heldout", type=Path, help="folder of held-out .py files (default: werkzeug's source)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "codeparrot-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    variants = ["gpt2"] + [v for v in args.variants if v != "gpt2"]  # the baseline first

    train = stdlib_texts()
    heldout_root = args.heldout or heldout_dir(args.cache)
    heldout = [p.read_text(encoding="utf-8") for p in python_files(heldout_root)]
    print(f"train: stdlib, {len(train)} files, {sum(map(len, train)) / 1e6:.1f} M chars")
    print(f"held out: {heldout_root}, {len(heldout)} files, {sum(map(len, heldout)) / 1e6:.2f} M chars\n")

    results = []
    for vocab in args.vocab_sizes:
        print(f"{'vocab':>6} {'variant':<12} {'chars/tok':>9} {'vs gpt2':>8} {'tok/word':>8} "
              f"{'train s':>8} {'cpu s':>6} {'vs gpt2':>8}  keywords not one token")
        base = None
        for variant in variants:
            start, cpu_start = time.perf_counter(), time.process_time()
            tok = train_tokenizer(train, vocab_size=vocab, variant=variant)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            m = measure(tok, heldout)
            exact = all(tok.decode(tok.encode(t).ids) == t for t in heldout)
            row = {"vocab_size": vocab, "variant": variant, "chars_per_token": m["chars_per_token"],
                   "fertility": m["fertility"], "train_seconds": seconds, "train_cpu_seconds": cpu,
                   "round_trip_exact": exact,
                   "keywords_not_single": keyword_report(tok)["not_single"]}
            base = base or row
            row["chars_per_token_ratio"] = row["chars_per_token"] / base["chars_per_token"]
            row["train_seconds_ratio"] = seconds / base["train_seconds"]
            row["train_cpu_seconds_ratio"] = cpu / base["train_cpu_seconds"]
            results.append(row)
            print(f"{vocab:>6} {variant:<12} {row['chars_per_token']:>9.3f} {row['chars_per_token_ratio']:>7.3f}x "
                  f"{row['fertility']:>8.3f} {seconds:>8.1f} {cpu:>6.1f} {row['train_cpu_seconds_ratio']:>7.2f}x  "
                  f"{' '.join(repr(k) for k in row['keywords_not_single']) or '-'}"
                  + ("" if exact else "  ROUND TRIP FAILED"))
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["round_trip_exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
