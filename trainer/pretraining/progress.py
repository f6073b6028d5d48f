"""A pretraining run's progress: the state its checkpoints carry, its metrics file and the
throughput window behind each progress line."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from trainer.pretraining import checkpoint as ckpt
from trainer.pretraining.args import UsageError


@dataclass
class RunState:
    """A checkpoint's trainer_state.json: where the run is, and what a resumed run must match.

    Saved with `asdict` by every checkpoint and rebuilt by `RunState.read` on --resume.
    """
    world_size: int                  # processes that wrote it: the data position is per rank
    dataloader_workers: int          # tokenizing processes per rank: they split the stream
    seq_length: int
    args: dict                       # the run's scalar arguments
    step: int = 0                    # optimizer steps taken
    batches_consumed: int = 0        # micro-batches each rank has drawn (where its stream resumes)
    tokens_seen: int = 0             # over all ranks
    nonfinite_skipped: int = 0
    consecutive_nonfinite: int = 0
    data_digest: str = ""            # a running fingerprint of this rank's batches (chain_digest)
    data_digests: list[str] = field(default_factory=list)  # every rank's, gathered when saving
    final: bool = False              # written at the end of a run

    @classmethod
    def read(cls, checkpoint: Path) -> RunState:
        saved = ckpt.read_state(checkpoint)
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in saved.items() if k in names})
        except TypeError as exc:  # a required field is missing
            raise UsageError(f"{checkpoint / ckpt.STATE_FILE} is not a pretraining state: {exc}") from exc


def chain_digest(previous: str, batch) -> str:
    """A running fingerprint of the data one rank trained on (compares runs and ranks)."""
    return hashlib.sha256(previous.encode() + batch.numpy().tobytes()).hexdigest()[:32]


class MetricsFile:
    """OUTPUT/metrics.jsonl, one JSON object per line (main process only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.is_file():
            # Rows written after the checkpoint by the interrupted run are replayed: drop them.
            rows = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        elif enabled and resume_step is None and path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")


class ThroughputWindow:
    """The steps since the last progress line: their mean loss and their speed.

    Evaluation and saving run inside `paused()`: they are not training time.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.loss_sum, self.loss_steps = 0, 0.0, 0
        # process_time: this process's CPU time (all its threads; not the data workers)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def add(self, loss: float | None) -> None:
        """One step; `loss` is None for a step whose update was skipped."""
        self.steps += 1
        if loss is not None:
            self.loss_sum += loss
            self.loss_steps += 1

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.loss_steps, 1)

    def tokens_per_s(self, tokens_per_step: int) -> tuple[float, float]:
        """Tokens per wall-clock second and per second of this process's CPU time."""
        tokens = self.steps * tokens_per_step
        wall = time.perf_counter() - self.wall
        return tokens / wall, tokens / max(time.process_time() - self.cpu, 1e-9)

    @contextmanager
    def paused(self):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
