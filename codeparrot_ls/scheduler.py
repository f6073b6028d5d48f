"""One decoding thread, cancellable jobs, no backlog.

Decoding is CPU bound and there is one model, so completions run one at a time
on a single worker thread. Each job carries a cancellation flag that the
decoder checks before every token:

* a newer request for the same document sets the flag of the older one
  (the user has typed on; nobody will see the old suggestion);
* `$/cancelRequest` cancels the awaiting asyncio task, and the task sets the
  flag on its way out, so the worker stops within one token;
* a job whose flag is already set when the worker reaches it is skipped
  without running, so requests that queued up while the worker was busy never
  turn into a backlog.

Every finished job is summarised in `Stats` (served by the `codeparrot.stats`
command), which is how tests and benchmarks see that work really stopped.

`idle` is set while no job is queued or running: background work (the workspace index)
waits on it, so it takes neither the cores nor the GIL from a completion.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any


class Ticket:
    """The cancellation flag of one job, and what the worker saw of it."""

    def __init__(self, key: str, seq: int):
        self.key = key
        self.seq = seq
        self._flag = threading.Event()
        self.reason = ""
        self.cancelled_at: float | None = None
        self.checks = 0                 # is_cancelled() calls: one per decoded token
        self.saw_cancel = False         # the worker observed the flag while running

    def cancel(self, reason: str) -> None:
        if not self._flag.is_set():
            self.reason = reason
            self.cancelled_at = time.monotonic()
            self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def is_cancelled(self) -> bool:
        """The callback handed to the decoder (called from the worker thread)."""
        self.checks += 1
        if self._flag.is_set():
            self.saw_cancel = True
            return True
        return False


@dataclass
class JobRecord:
    seq: int
    key: str
    outcome: str                 # "done" | "cancelled" (stopped mid-way) | "skipped" (never ran) | "error"
    reason: str                  # why it was cancelled: "superseded" | "cancelRequest" | "shutdown" | ""
    checks: int                  # cancellation checks made while running (~ decoded tokens)
    queued_ms: float
    run_ms: float
    ms_after_cancel: float | None   # how long the worker went on after the flag was set


@dataclass
class Stats:
    requests: int = 0
    done: int = 0
    cancelled: int = 0
    skipped: int = 0
    errors: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=64))

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "recent"}
        d["recent"] = [asdict(r) for r in self.recent]
        return d


class Scheduler:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codeparrot-decode")
        self._latest: dict[str, Ticket] = {}
        self._live: set[Ticket] = set()
        self._seq = 0
        self._running: Ticket | None = None
        self.stats = Stats()
        self.idle = threading.Event()
        self.idle.set()
        self._pending = 0
        self._pending_lock = threading.Lock()

    async def run(self, key: str, job: Callable[[Callable[[], bool]], Any]) -> tuple[bool, Any]:
        """Run `job(is_cancelled)` on the worker; returns (ran_to_completion, result).

        Cancels the previous job with the same `key` (a document URI). If this
        coroutine is cancelled (`$/cancelRequest`), the job's flag is set before
        the CancelledError propagates.
        """
        self._seq += 1
        ticket = Ticket(key, self._seq)
        previous = self._latest.get(key)
        if previous is not None:
            previous.cancel("superseded")
        self._latest[key] = ticket
        self._live.add(ticket)
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        with self._pending_lock:
            self._pending += 1
            self.idle.clear()
        future = loop.run_in_executor(self._executor, self._work, ticket, job, time.monotonic())
        try:
            # Shielded: a cancelled request's job still reaches the worker, which sees the flag
            # and skips it (or stops it within one token), so every request is accounted for.
            finished, result = await asyncio.shield(future)
            # Superseded after the decoder's last check: the result is stale all the same.
            return finished and not ticket.cancelled, result
        except asyncio.CancelledError:
            ticket.cancel("cancelRequest")
            raise
        finally:
            self._live.discard(ticket)
            if self._latest.get(key) is ticket:
                del self._latest[key]

    def running(self) -> dict[str, Any] | None:
        """The job on the worker now (seq, key, cancellation checks so far), if any."""
        t = self._running
        return None if t is None else {"seq": t.seq, "key": t.key, "checks": t.checks, "cancelled": t.cancelled}

    def cancel(self, key: str, reason: str) -> None:
        ticket = self._latest.get(key)
        if ticket is not None:
            ticket.cancel(reason)

    def cancel_all(self, reason: str = "shutdown") -> None:
        for ticket in list(self._live):
            ticket.cancel(reason)

    def shutdown(self) -> None:
        # Every flag is set first, so waiting for the worker costs at most one decoded token.
        self.cancel_all()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _work(self, ticket: Ticket, job, queued_at: float) -> tuple[bool, Any]:
        try:
            return self._run_job(ticket, job, queued_at)
        finally:
            with self._pending_lock:
                self._pending -= 1
                if not self._pending:
                    self.idle.set()

    def _run_job(self, ticket: Ticket, job, queued_at: float) -> tuple[bool, Any]:
        started = time.monotonic()
        if ticket.cancelled:
            self._record(ticket, "skipped", queued_at, started, started)
            return False, None
        self._running = ticket
        try:
            result = job(ticket.is_cancelled)
        except BaseException:
            self._record(ticket, "error", queued_at, started, time.monotonic())
            raise
        finally:
            self._running = None
        ended = time.monotonic()
        finished = not ticket.saw_cancel
        self._record(ticket, "done" if finished else "cancelled", queued_at, started, ended)
        return finished, result

    def _record(self, ticket: Ticket, outcome: str, queued_at: float, started: float, ended: float) -> None:
        s = self.stats
        if outcome == "done":
            s.done += 1
        elif outcome == "cancelled":
            s.cancelled += 1
        elif outcome == "skipped":
            s.skipped += 1
        else:
            s.errors += 1
        after = None
        if ticket.cancelled_at is not None and outcome == "cancelled":
            after = max(0.0, (ended - ticket.cancelled_at) * 1000)
        s.recent.append(JobRecord(
            seq=ticket.seq, key=ticket.key, outcome=outcome, reason=ticket.reason, checks=ticket.checks,
            queued_ms=(started - queued_at) * 1000, run_ms=(ended - started) * 1000, ms_after_cancel=after))
