"""Speed against llama.cpp on the same weights, in one run.

Each model is exported by `codeparrot export` (ONNX fp32 + int8, as served) and converted to GGUF
Q8_0 and F16 by llama.cpp's own converter (bench/llamacpp_convert.py). llama.cpp runs through
llama-cpp-python's bindings (bench/llamacpp_engine.py) with llama-server's batch defaults, flash
attention on, fed token ids; its loop is a bare one (decode, argmax, decode), our engine runs
the server's `Decoder`. For every model, prompt length and thread count (1, 2):

* a cold completion: prompt + 32 greedy tokens (prompt ms = until the first token's logits,
  decode ms per token = the rest / the tokens after the first);
* typing: the previous request's prompt was the same text without its last 3 characters,
  completed (32 tokens) just before; both engines reuse the common token prefix of their cache;
* ours "served": greedy with prompt-lookup drafts, the server's default decoding.

Checks in the same run: llama.cpp F16 and our fp32 give the same greedy tokens (through the same
decode loop); with `--quality-positions N`, line completion (trainer's evaluation: the server's
prompt builder, held-out code given by `--heldout`) of our int8 vs llama.cpp Q8_0 on the trained
model. Timings are the best of `--repeats` rounds after a warm-up round, the engines taking turns.

Models: `mid-512` is the shipped default (trained); `mid-1024` / `mid-2048` are its weights with
the position table extended (rows past 512 repeat rows 0-511: timing only); `small-*` is GPT-2
small's shape (12 x 768, vocab 50,257 padded to 50,304; 124 M parameters) with random weights.

    pip install -e '.[train,bench]'
    python bench/bench_llamacpp.py --workdir runs/llamacpp --models mid-512,mid-1024,small-1024,mid-2048 \
        --quality-positions 400 --heldout runs/heldout/src --json bench/results/llamacpp.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamacpp_convert import convert  # noqa: E402

from codeparrot_ls.modelfiles import CONFIG_FILE, TOKENIZER_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "codeparrot_ls" / "models" / "default"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
PROMPT_FILES = ["pprint.py", "calendar.py", "difflib.py", "ftplib.py", "imaplib.py"]
NEW_TOKENS = 32
TYPED_CHARS = 3
# name -> (preset, n_positions, vocab rows or None for the shipped weights)
MODELS = {
    "mid-512": ("mid", 512, None), "mid-1024": ("mid", 1024, None), "mid-2048": ("mid", 2048, None),
    "small-1024": ("small", 1024, 50257), "small-2048": ("small", 2048, 50257),
}
QUANTS = ("q8_0", "f16")


def build_checkpoint(name: str, root: Path) -> Path:
    """The model's Hugging Face checkpoint folder (the shipped one for mid-512)."""
    preset, n_positions, vocab = MODELS[name]
    shipped = SHIPPED / "checkpoint"
    if vocab is None and n_positions == 512:
        return shipped
    ckpt = root / name / "checkpoint"
    if (ckpt / CONFIG_FILE).is_file():
        return ckpt
    import torch
    from transformers import GPT2LMHeadModel

    if vocab is None:   # the shipped weights, position table tiled to n_positions
        model = GPT2LMHeadModel.from_pretrained(shipped, dtype=torch.float32)
        old = model.transformer.wpe.weight.data
        model.transformer.wpe = torch.nn.Embedding(n_positions, old.shape[1])
        model.transformer.wpe.weight.data = old.repeat(n_positions // old.shape[0], 1)
        model.config.n_positions = n_positions
    else:
        from trainer.model import build_config

        torch.manual_seed(0)
        eos = json.loads((SHIPPED / "export.json").read_text())["eos_token_id"]
        model = GPT2LMHeadModel(build_config(preset, vocab, eos, n_positions=n_positions))
    model.save_pretrained(ckpt)
    for f in (TOKENIZER_FILE, "tokenizer_config.json", "generation_config.json"):
        if (shipped / f).is_file():
            shutil.copy(shipped / f, ckpt / f)
    return ckpt


def build_model(name: str, root: Path) -> dict[str, Path]:
    """Checkpoint, ONNX export and GGUF files of one model (kept in `root` for the next run)."""
    from trainer.export import ExportArgs, run as export_run

    ckpt = build_checkpoint(name, root)
    onnx_dir = root / name / "onnx"
    if not (onnx_dir / "export.json").is_file():
        export_run(ExportArgs(checkpoint=str(ckpt), output=str(onnx_dir), quantize="int8"))
    # int8 as served: the shipped folder itself for mid-512 (our export gives the fp32 graph)
    files = {"checkpoint": ckpt, "onnx": onnx_dir, "int8": SHIPPED if ckpt == SHIPPED / "checkpoint" else onnx_dir}
    for q in QUANTS:
        files[q] = root / name / f"model-{q}.gguf"
        if not files[q].is_file():
            t0 = time.perf_counter()
            convert(ckpt, files[q], q)
            print(f"{name}: {q} GGUF in {time.perf_counter() - t0:.0f} s ({files[q].stat().st_size / 1e6:.0f} MB)")
    return files


def prompt_ids(tokenizer, n: int, offset: int = 0) -> list[int]:
    """`n` tokens of standard-library source from token `offset` of the prompt files."""
    ids: list[int] = []
    for name in PROMPT_FILES:
        ids += tokenizer.encode((STDLIB / name).read_text(encoding="utf-8")).ids
        if len(ids) >= offset + n:
            return ids[offset:offset + n]
    raise ValueError(f"the prompt files hold fewer than {offset + n} tokens")


def typed_from(tokenizer, ids: list[int]) -> list[int]:
    """The previous request's prompt: the same text without its last TYPED_CHARS characters."""
    return tokenizer.encode(tokenizer.decode(ids)[:-TYPED_CHARS]).ids


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaRun:
    """The bare llama.cpp loop: reuse the common prefix of the cache, decode the rest of the
    prompt, then one token per pass, greedy."""

    def __init__(self, llm):
        self.llm, self.cached = llm, []

    def complete(self, ids: list[int]) -> dict:
        t0 = time.perf_counter()
        reuse = min(common_prefix(self.cached, ids), len(ids) - 1)
        self.llm.truncate(reuse)
        tok = int(np.argmax(self.llm.run(ids[reuse:], 1)[-1]))
        t1 = time.perf_counter()
        out = [tok]
        for _ in range(NEW_TOKENS - 1):
            tok = int(np.argmax(self.llm.run([tok], 1)[-1]))
            out.append(tok)
        t2 = time.perf_counter()
        self.cached = ids + out[:-1]
        return {"prompt_ms": (t1 - t0) * 1e3, "step_ms": (t2 - t1) * 1e3 / (NEW_TOKENS - 1),
                "total_ms": (t2 - t0) * 1e3, "tokens": len(out), "reused": reuse}

    def forget(self) -> None:
        self.cached = []
        self.llm.truncate(0)


class OursRun:
    """Our engine through the server's `Decoder` (its KV prefix cache is the typing case's reuse)."""

    def __init__(self, engine, lookup: int):
        from codeparrot_ls.engine import Decoder

        self.decoder, self.lookup = Decoder(engine), lookup

    def complete(self, ids: list[int]) -> dict:
        from codeparrot_ls.engine import GenerationRequest

        t0 = time.perf_counter()
        g = self.decoder.generate(GenerationRequest(ids, max_new_tokens=NEW_TOKENS, lookup_tokens=self.lookup))[0]
        total = (time.perf_counter() - t0) * 1e3
        n = len(g.token_ids) + (g.finish_reason == "eos")
        return {"prompt_ms": g.prefill_ms, "step_ms": g.decode_ms / max(n - 1, 1), "total_ms": total,
                "tokens": n, "reused": g.reused_tokens}

    def forget(self) -> None:
        self.decoder.reset()


def best_runs(runners: dict, ids: list[int], previous: list[int] | None, repeats: int) -> dict[str, dict]:
    """Each runner's best completion of `ids` (cold, or just after completing `previous`) over
    `repeats` rounds after a warm-up round; the runners take turns, so all see the same load.
    A pause before each timed run lets the other engine's threads go idle (both spin a while)."""
    best: dict[str, dict] = {}
    for round_ in range(repeats + 1):
        for name, runner in runners.items():
            runner.forget()
            if previous is not None:
                runner.complete(previous)
            time.sleep(0.05)
            run = runner.complete(ids)
            if round_ and (name not in best or run["total_ms"] < best[name]["total_ms"]):
                best[name] = run
    return best


def time_model(files: dict, lengths: list[int], threads: list[int], repeats: int) -> list[dict]:
    from codeparrot_ls.engine import load_engine
    from llamacpp_engine import LlamaCpp

    rows = []
    for t in threads:
        ours = load_engine(files["int8"], precision="int8", threads=t)
        tok, n_ctx = ours.tokenizer, ours.info.n_positions
        runners = {"ours int8": OursRun(ours, 0), "ours int8 served": OursRun(ours, 4)}
        llms = {q: LlamaCpp(files[q], t, n_ctx) for q in QUANTS}
        runners.update({f"llama.cpp {q.upper()}": LlamaRun(llm) for q, llm in llms.items()})
        for n in lengths:
            ids = prompt_ids(tok, n)
            previous = typed_from(tok, ids)
            cold, typing = best_runs(runners, ids, None, repeats), best_runs(runners, ids, previous, repeats)
            for name in runners:
                rows.append({"engine": name, "threads": t, "prompt_tokens": n, **cold[name],
                             "typing_ms": typing[name]["total_ms"], "typing_reused": typing[name]["reused"]})
                print_row(rows[-1])
        for llm in llms.values():
            llm.close()
        ours.close()
    return rows


def same_greedy_tokens(files: dict, lengths: list[int], offsets=(0, 3000, 6000, 9000)) -> dict:
    """llama.cpp F16 vs our fp32 through the same decode loop (one token per pass): equal ids?
    Where they part, the fp32 logit of its own token minus that of llama.cpp's (a near-tie is ~0)."""
    from codeparrot_ls.engine import Decoder, GenerationRequest, load_engine
    from llamacpp_engine import LlamaCppEngine

    ours = Decoder(load_engine(files["onnx"], precision="fp32", threads=2))
    theirs = Decoder(LlamaCppEngine(files["f16"], files["onnx"], threads=2))
    equal, total, parted = 0, 0, []
    for n in lengths:
        for offset in offsets:
            prompt = prompt_ids(ours.tokenizer, n, offset)
            req = GenerationRequest(prompt, max_new_tokens=NEW_TOKENS, lookup_tokens=0)
            a, b = ours.generate(req)[0].token_ids, theirs.generate(req)[0].token_ids
            equal += a == b
            total += 1
            k = common_prefix(a, b)
            if a != b and k < min(len(a), len(b)):
                logits, _ = ours.engine.forward(np.array([prompt + a[:k]], np.int64), None, 1)
                parted.append({"at": k, "fp32_margin": float(logits[0, -1, a[k]] - logits[0, -1, b[k]])})
    ours.close()
    theirs.close()
    return {"equal": equal, "sequences": total, "parted": parted}


def quality(files: dict, heldout: str, positions: int) -> dict:
    """Line completion as served (random cursor) of our int8 vs llama.cpp Q8_0, same positions."""
    from codeparrot_ls.engine import load_engine
    from llamacpp_engine import LlamaCppEngine
    from trainer.evaluate.line_completion import evaluate_line_completion

    out = {}
    for name, engine in (("ours int8", lambda: load_engine(files["int8"], precision="int8", threads=2)),
                         ("llama.cpp Q8_0", lambda: LlamaCppEngine(files["q8_0"], files["int8"], threads=2))):
        e = engine()
        r = evaluate_line_completion(e, heldout, positions=positions, seed=0, cursor="random", fim="served",
                                     batch_size=1)
        e.close()
        out[name] = {**{k: r["results"]["as_served"][k] for k in ("exact_match", "edit_similarity", "positions")},
                     "predictions": [s["prediction"] for s in r["samples"]["as_served"]]}
    a, b = (v.pop("predictions") for v in out.values())
    out["same_prediction"] = sum(x == y for x, y in zip(a, b))
    return out


def print_row(r: dict) -> None:
    print(f"  {r['engine']:<17} {r['threads']:>3} {r['prompt_tokens']:>6} {r['prompt_ms']:>9.1f} {r['step_ms']:>8.2f} "
          f"{r['total_ms']:>9.1f} {r['typing_ms']:>9.1f}  (typing reused {r['typing_reused']} tokens)", flush=True)


def summary(model: str, rows: list[dict]) -> list[str]:
    """Per prompt length: each engine's best thread count, and llama.cpp Q8_0 / ours."""
    lines = []
    for n in sorted({r["prompt_tokens"] for r in rows}):
        best = {}
        for r in rows:
            if r["prompt_tokens"] == n and (r["engine"] not in best or r["total_ms"] < best[r["engine"]]["total_ms"]):
                best[r["engine"]] = r
        base = best["llama.cpp Q8_0"]
        for name in ("ours int8", "ours int8 served"):
            o = best[name]
            lines.append(f"{model} {n} tokens: {name} end to end {base['total_ms'] / o['total_ms']:.2f}x faster than "
                         f"llama.cpp Q8_0 ({o['total_ms']:.1f} vs {base['total_ms']:.1f} ms), prompt "
                         f"{base['prompt_ms'] / o['prompt_ms']:.2f}x, decode per token "
                         f"{base['step_ms'] / o['step_ms']:.2f}x, typing {base['typing_ms'] / o['typing_ms']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mid-512,mid-1024,small-1024,mid-2048", help=f"of {', '.join(MODELS)}")
    ap.add_argument("--workdir", type=Path, required=True, help="built models and GGUF files (reused next run)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality-positions", type=int, default=0, help="line-completion positions (mid-512 only)")
    ap.add_argument("--heldout", default="", help="held-out source folder for --quality-positions")
    ap.add_argument("--no-timing", action="store_true", help="only the checks (greedy tokens, quality)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; expected some of {list(MODELS)}")
    if args.quality_positions and not args.heldout:
        ap.error("--quality-positions needs --heldout")
    threads = [int(t) for t in args.threads.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.repeats}; "
          f"{NEW_TOKENS} new tokens; typing = {TYPED_CHARS} characters since the previous request")
    report: dict = {"models": {}, "load_average_before": os.getloadavg()}
    lines = []
    for name in names:
        files = build_model(name, args.workdir)
        n_positions = MODELS[name][1]
        lengths = [n_positions // 2, n_positions - 2 * NEW_TOKENS]   # room for a re-tokenized typing prompt
        print(f"\n{name} ({n_positions} positions): engine, threads, prompt tokens, prompt ms, decode ms/token, "
              "total ms, typing ms")
        rows = [] if args.no_timing else time_model(files, lengths, threads, args.repeats)
        parity = same_greedy_tokens(files, lengths)
        print(f"  greedy tokens, llama.cpp F16 vs our fp32: {parity['equal']} / {parity['sequences']} sequences of "
              f"{NEW_TOKENS} equal" + "".join(f"; one parts at token {p['at']}, fp32 margin {p['fp32_margin']:.3f}"
                                              for p in parity["parted"]))
        entry = {"rows": rows, "f16_vs_fp32": parity}
        if args.quality_positions and name == "mid-512":
            entry["quality"] = quality(files, args.heldout, args.quality_positions)
            print(f"  line completion as served, {args.quality_positions} held-out positions (EM / ES): " + ", ".join(
                f"{k} {v['exact_match']:.1f} / {v['edit_similarity']:.1f}" for k, v in entry["quality"].items()
                if isinstance(v, dict)) + f"; same prediction at {entry['quality']['same_prediction']}")
        report["models"][name] = entry
        lines += summary(name, rows) if rows else []
    print("\n" + "\n".join(lines))
    report["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
