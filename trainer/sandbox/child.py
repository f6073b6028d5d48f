"""The sandboxed side: run as `python -I -c <this source> CONFIG` by trainer/sandbox/__init__.py.

With namespaces this process is the init (PID 1) of a fresh PID namespace, made by
`unshare --pid --fork --kill-child --mount --net --ipc --uts` (plus `--user
--map-root-user` when the caller is not root). It builds a new root file system on
a tmpfs holding only read-only bind mounts of what Python needs (/usr, the Python
installation, /dev/null, /dev/zero, /dev/urandom) and a size-capped writable /tmp,
pivots into it and detaches the old root, then forks the worker that runs the
program and waits for it. When the worker ends, this init ends, and the kernel
kills everything else in the namespace, so nothing the program started outlives
it. The init is not dumpable: the program cannot ptrace it.

The worker drops to an unprivileged identity (uid 65534 when the caller is root,
so RLIMIT_NPROC binds; the caller's own uid inside a user namespace otherwise),
drops every capability, sets no_new_privs and the rlimits, and runs the program.
The program's source arrives on stdin. In check mode it then serves calls of one
function over two pipes (`fds`: requests in, replies out), as plain data
(trainer/sandbox/wire.py): the verdict is computed by a checker in another process.

Without namespaces (`mode` "none") the worker runs in this process: that fallback
has only the rlimits and the audit hook, and is not a security boundary.
"""

import json
import os
import sys

from trainer.sandbox.wire import decode, encode, receive, send  # inlined by trainer/sandbox/__init__.py

SETUP_FAILED = 97
NEW_ROOT = "/tmp"  # the mount point of the new root's tmpfs (in this private mount namespace only)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
LOCKED_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                "nodiratime": 2048, "relatime": 1 << 21}
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}


def fail(message):
    sys.stderr.write("sandbox: %s\n" % message)
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def mounts_under(path):
    """(mount point, locked flags) of every mount at or below `path`, per /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path.rstrip("/") + "/"):
                found.append((point, sum(LOCKED_FLAGS.get(o, 0) for o in parts[5].split(","))))
    return found


def build_root(cfg):
    ctypes, c = libc()

    def mount(src, target, fstype, flags, data=None, what=None):
        if c.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags,
                   data and data.encode()) != 0:
            fail("%s: %s" % (what or "mount %s" % target, os.strerror(ctypes.get_errno())))

    mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755", "a tmpfs for the new root")
    for path in cfg["binds"]:
        dst = NEW_ROOT + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems
            if not os.path.lexists(dst):
                os.symlink(os.readlink(path), dst)
            continue
        if os.path.isdir(path):
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "w").close()
        mount(path, dst, None, MS_BIND | MS_REC)
        writable = path.startswith("/dev/")  # /dev/null must take writes; device nodes hold no data
        for point, locked in mounts_under(dst):  # bind remounts must keep the flags the source had
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | locked | (MS_NOEXEC if writable else MS_RDONLY | MS_NODEV)
            mount(None, point, None, flags, what="make %s read-only" % point)
    os.makedirs(NEW_ROOT + "/tmp")
    os.mkdir(NEW_ROOT + "/.old")
    os.chdir(NEW_ROOT)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is None or c.syscall(number, b".", b".old") != 0:
        fail("pivot_root: %s" % (os.strerror(ctypes.get_errno()) if number else "unknown architecture"))
    os.chdir("/")
    if c.umount2(b"/.old", 2) != 0:  # MNT_DETACH: the old root is gone from this namespace
        fail("detach the old root: %s" % os.strerror(ctypes.get_errno()))
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, what="make / read-only")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%dm,mode=0700,uid=%d,gid=%d" % (cfg["tmpfs_mb"], cfg["uid"], cfg["uid"]), "a tmpfs for /tmp")


def drop_privileges(cfg):
    ctypes, c = libc()
    if cfg["mode"] == "root":
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to uid 65534: every capability goes with it

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    c.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    c.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if c.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0 and cfg["mode"] != "none":
        fail("cannot drop capabilities")
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]


def guard(work):
    """An audit hook: a first line that gives clear errors, not a boundary (Python code can undo it)."""
    join, realpath, sep, fsdecode = os.path.join, os.path.realpath, os.sep, os.fsdecode
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
                   "os.setxattr", "os.removexattr", "os.mkfifo", "os.mknod"}
    denied = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
              "os.system", "os.kill", "os.killpg", "pty.", "ctypes.", "os.chroot", "os.setuid", "os.putenv",
              "urllib.", "http.", "ftplib.", "smtplib.", "_posixsubprocess", "sys.addaudithook")
    denied_imports = {"ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket", "subprocess",
                      "multiprocessing", "_multiprocessing", "pty", "_xxsubinterpreters", "_testcapi"}

    def inside(path):
        if isinstance(path, int):
            return True
        p = realpath(join(work, fsdecode(path)))
        return p == work or p.startswith(work + sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(ch in mode for ch in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & write_flags)
            if writes and not inside(path):
                raise PermissionError("sandbox: write outside the work directory: %r" % (path,))
        elif event in path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError("sandbox: %s outside the work directory: %r" % (event, a))
        elif event == "import":
            if args[0] in denied_imports:
                raise ImportError("sandbox: import of %s is not allowed" % args[0])
        elif event.startswith(denied):
            raise PermissionError("sandbox: %s is not allowed" % event)
    return hook


def serve(namespace, name, fds):
    """Answer calls of `name` from the checker until it hangs up; only plain data crosses."""
    rx, tx = os.fdopen(fds[0], "rb"), os.fdopen(fds[1], "wb")
    fn = namespace.get(name)
    if not callable(fn):
        send(tx, {"error": "the program defines no function %r" % name})
        return
    send(tx, {"ready": True})
    while True:
        msg = receive(rx)
        if msg is None:
            return
        try:
            reply = {"value": encode(fn(*decode(msg["args"]), **decode(msg["kwargs"])))}
        except BaseException as e:  # noqa: B902 - the checker decides what an exception means
            reply = {"raised": "%s: %s" % (type(e).__name__, e)}
        send(tx, reply)


def worker(cfg, source):
    import resource
    import traceback

    drop_privileges(cfg)
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    work = os.path.realpath(os.getcwd())
    sys.stdout.reconfigure(line_buffering=True)
    if cfg["guard"]:
        sys.addaudithook(guard(work))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as e:  # noqa: B902
        if cfg["serve"]:  # tell the checker why nothing will answer
            try:
                send(os.fdopen(cfg["fds"][1], "wb"), {"error": "%s: %s" % (type(e).__name__, e)})
            except Exception:
                pass
        if isinstance(e, SystemExit):
            raise
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if cfg["serve"]:
        serve(namespace, cfg["serve"], cfg["fds"])
    sys.stdout.flush()
    os._exit(0)


def init(cfg, source):
    """PID 1 of the sandbox: build the root, start the worker, end with it."""
    build_root(cfg)
    os.chdir("/tmp")
    pid = os.fork()
    if pid == 0:
        try:
            worker(cfg, source)
        finally:
            os._exit(1)
    ctypes, c = libc()
    c.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the program cannot ptrace or read this process
    for fd in cfg.get("fds", ()):  # the pipes belong to the worker: its end is their end
        try:
            os.close(fd)
        except OSError:
            pass
    while True:
        child, status = os.waitpid(-1, 0)
        if child == pid:  # returning ends the namespace: the kernel kills what is left in it
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def main():
    cfg = json.loads(sys.argv.pop(1))
    source = sys.stdin.buffer.read().decode("utf-8")
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    if cfg["mode"] == "none":
        worker(cfg, source)
    else:
        init(cfg, source)


main()
