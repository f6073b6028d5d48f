"""The sandbox that runs generated code: real programs in the real sandbox, each attack the
kernel layers must stop, with the Python audit hook switched off first where it would stop
them earlier (it is a convenience, not a boundary)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from trainer.sandbox import (Isolation, SandboxLimits, SandboxUnavailable, _binds, candidates, check_solution,
                             isolation, run_python, works)

QUICK = SandboxLimits(timeout_s=5)

needs_kernel_sandbox = pytest.mark.skipif(not isolation().boundary,
                                          reason="no Linux namespaces here: only the fallback exists")
# Every kernel sandbox that works here (as root: uid 65534, and a user namespace), so each is tested.
KERNEL = [iso for iso in candidates() if works(iso)]
each_kernel_sandbox = pytest.mark.parametrize("iso", KERNEL or [pytest.param(None, marks=pytest.mark.skip(
    reason="no Linux namespaces here: only the fallback exists"))], ids=lambda iso: iso and iso.mode)

# Finds the audit hook's closure through the garbage collector and rewrites its cells, as the
# issue's attack did: afterwards ctypes, sockets, subprocesses and writes pass the hook.
DISABLE_HOOK = '''
import gc
for _o in gc.get_objects():
    if type(_o).__name__ == "function" and _o.__name__ == "hook" and _o.__closure__:
        for _cell in _o.__closure__:
            _v = _cell.cell_contents
            if isinstance(_v, tuple):
                _cell.cell_contents = ("\\0none",)
            elif isinstance(_v, (set, frozenset)):
                _cell.cell_contents = set()
            elif callable(_v) and getattr(_v, "__name__", "") == "inside":
                _cell.cell_contents = lambda path: True
import ctypes  # refused by the hook while it works
print("HOOK OFF")
'''

SUM = {"entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
                                     "    assert candidate(-1, 1) == 0\n"}


def check_add(body: str, **kw):
    return check_solution("def add(a, b):\n" + body, SUM["entry_point"], SUM["test"], **kw)


# ---- verdicts -------------------------------------------------------------------------------


def test_right_solution_passes_and_wrong_one_fails():
    assert check_add("    return a + b\n", limits=QUICK).status == "passed"
    wrong = check_add("    return a - b\n", limits=QUICK)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


@pytest.mark.parametrize("forgery", [
    # Exit with status 0 before the test can run, printing what a pass looked like.
    "    return a - b\nimport os, sys\nprint('passed')\nsys.stdout.flush()\nos._exit(0)\n",
    # Exit with status 0 from inside the first call.
    "    import os\n    os._exit(0)\n",
    # An answer that equals everything.
    "    class Yes:\n        __eq__ = lambda self, other: True\n    return Yes()\n",
    # Look for a pass token anywhere in the process and print it, then exit cleanly.
    "    return 0\nimport gc, re, sys, os\nfor o in gc.get_objects():\n"
    "    if isinstance(o, dict):\n        for v in list(o.values()):\n"
    "            if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):\n                print(v)\n"
    "print(getattr(sys.modules['__main__'], 'token', ''))\nsys.stdout.flush()\nos._exit(0)\n",
    # Kill every process it can see (the checker is not among them), hook disabled first.
    "    return 0\n" + DISABLE_HOOK + "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
])
def test_a_wrong_solution_cannot_forge_a_pass(forgery):
    res = check_add(forgery, limits=QUICK)
    assert res.status == "failed", res


def test_exceptions_and_non_data_results_fail_with_their_reason():
    res = check_add("    return 1 / 0\n", limits=QUICK)
    assert res.status == "failed" and "ZeroDivisionError" in res.stderr
    res = check_add("    return object()\n", limits=QUICK)
    assert res.status == "failed" and "cannot send a value of type object" in res.stderr
    res = check_add("    return a + b\nraise SystemExit(0)\n", limits=QUICK)
    assert res.status == "failed"


def test_a_solution_that_never_answers_times_out():
    res = check_add("    while True:\n        pass\n", limits=SandboxLimits(timeout_s=1))
    assert res.status == "timeout"


# ---- process containment --------------------------------------------------------------------


def test_infinite_loop_is_killed_at_the_timeout():
    res = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1))
    assert res.status == "timeout"


def test_an_early_exit_is_just_an_exit_status():
    assert run_python("import os\nos._exit(0)\n", QUICK).status == "ok"
    assert run_python("raise ValueError('x')\n", QUICK).status == "error"


@needs_kernel_sandbox
def test_no_new_processes_even_with_the_hook_disabled(tmp_path):
    if isolation().mode == "userns" and os.geteuid() == 0:
        pytest.skip("a root caller in a user namespace is root to RLIMIT_NPROC")
    marker = tmp_path / "spawned"
    program = DISABLE_HOOK + f'''
import os, subprocess
for name, attempt in [
        ("subprocess", lambda: subprocess.run(["/bin/sh", "-c", "touch {marker}"])),
        ("system", lambda: ctypes.CDLL(None).system(b"touch {marker}")),
        ("fork", lambda: os.fork())]:
    try:
        r = attempt()
        print(name, "STARTED" if r in (0, None) or getattr(r, "returncode", 1) == 0 else r)
    except OSError as e:
        print(name, "refused:", e)
'''
    res = run_python(program, QUICK)
    assert "HOOK OFF" in res.stdout, res
    assert "STARTED" not in res.stdout and res.stdout.count("Resource temporarily unavailable") == 2, res
    assert not marker.exists()


@needs_kernel_sandbox
def test_a_fork_bomb_stops_at_the_process_limit():
    if isolation().mode == "userns" and os.geteuid() == 0:
        pytest.skip("a root caller in a user namespace is root to RLIMIT_NPROC")
    name = "cp" + uuid.uuid4().hex[:12]
    program = DISABLE_HOOK + f'''
import os, time
ctypes.CDLL(None).prctl(15, b"{name}", 0, 0, 0)  # PR_SET_NAME, inherited by the children
forked = 0
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        forked += 1
    except OSError:
        pass
print("FORKED", forked, flush=True)
'''
    res = run_python(program, SandboxLimits(timeout_s=5, processes=8))
    assert res.status == "ok", res
    assert 0 <= int(res.stdout.split("FORKED")[1]) < 8  # the uid's processes, this one included, at most 8
    assert _processes_named(name) == []


def _processes_named(name: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


@each_kernel_sandbox
@pytest.mark.parametrize("parent", ["exits", "loops"])
def test_a_setsid_child_dies_with_the_program(parent, iso):
    """Even where processes are allowed, a forked child that leaves the session dies with the program."""
    name = "cp" + uuid.uuid4().hex[:12]
    program = DISABLE_HOOK + f'''
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    ctypes.CDLL(None).prctl(15, b"{name}", 0, 0, 0)  # PR_SET_NAME
    os.write(w, b"x")
    while True:
        time.sleep(1)
os.read(r, 1)
print("CHILD RUNNING", flush=True)
''' + ("while True:\n    pass\n" if parent == "loops" else "")
    res = run_python(program, SandboxLimits(timeout_s=3, processes=8), iso)
    assert "CHILD RUNNING" in res.stdout, res
    assert res.status == ("timeout" if parent == "loops" else "ok")
    assert _processes_named(name) == []


# ---- file system ----------------------------------------------------------------------------


@each_kernel_sandbox
def test_secrets_and_home_folders_are_not_there(tmp_path, iso):
    secret = tmp_path / "secret.txt"
    secret.write_text("precious")
    program = DISABLE_HOOK + f'''
import os
for path in ["/etc/shadow", "/etc/passwd", {str(secret)!r}, "/proc/1/environ"]:
    try:
        print(path, "READ", open(path).read()[:20])
    except OSError as e:
        print(path, "refused", type(e).__name__)
for path in ["/root", "/home", "/etc", "/"]:
    try:
        print(path, "LISTED", sorted(os.listdir(path)))
    except OSError as e:
        print(path, "refused", type(e).__name__)
'''
    res = run_python(program, QUICK, iso)
    assert res.status == "ok" and "HOOK OFF" in res.stdout, res
    assert "READ" not in res.stdout, res.stdout
    # The root holds only what Python needs: /usr, the libraries, the Python installation, /dev, /tmp.
    on_the_way = {part for b in _binds() for part in b.strip("/").split("/")}
    for line in res.stdout.splitlines():
        if " LISTED " in line:
            listed = eval(line.split(" LISTED ", 1)[1])  # a list's repr, printed by the program above
            assert set(listed) <= on_the_way | {"tmp", "dev"}, line


@each_kernel_sandbox
def test_writes_outside_the_temp_folder_fail_with_the_hook_disabled(tmp_path, iso):
    target = tmp_path / f"escape-{uuid.uuid4().hex}.txt"
    program = DISABLE_HOOK + f'''
import os
for path in [{str(target)!r}, "/usr/escape.txt", "/escape.txt", "/dev/escape", "/root/escape.txt"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, "refused", type(e).__name__)
os.chdir("/usr")
try:
    fd = os.open("/", os.O_RDONLY)
    os.close(os.open("escape.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    print("dir_fd WRITTEN")
except OSError as e:
    print("dir_fd refused", type(e).__name__)
os.chdir("/tmp")
open("inside.txt", "w").write("fine")
print("inside", open("inside.txt").read())
'''
    res = run_python(program, QUICK, iso)
    assert "HOOK OFF" in res.stdout and "inside fine" in res.stdout, res
    assert "WRITTEN" not in res.stdout, res.stdout
    assert not target.exists()


def test_writes_inside_work_and_are_thrown_away():
    res = run_python("open('scratch.txt', 'w').write('hello')\nprint(open('scratch.txt').read())\n"
                     "import os\nprint(os.getcwd())\n", QUICK)
    assert res.status == "ok" and "hello" in res.stdout
    workdir = res.stdout.strip().splitlines()[-1]
    if isolation().boundary:
        assert workdir == "/tmp"  # the sandbox's own tmpfs, gone with its mount namespace
    else:
        assert not os.path.exists(workdir)


def test_the_hook_refuses_writes_outside_early(tmp_path):
    target = tmp_path / "x.txt"
    res = run_python(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert res.status == "error" and not target.exists()


def test_files_written_inside_are_capped():
    res = run_python("open('big.bin', 'wb').write(b'x' * (3 << 20))\n", SandboxLimits(timeout_s=5, file_size_mb=2))
    assert res.status == "error"  # RLIMIT_FSIZE: SIGXFSZ or EFBIG
    if isolation().boundary:  # and all files together fit a tmpfs of 4 x the file-size limit
        many = "for i in range(6):\n    open(f'f{i}.bin', 'wb').write(b'x' * (3 << 19))\n"
        res = run_python(many, SandboxLimits(timeout_s=5, file_size_mb=2))
        assert res.status == "error" and "No space left" in res.stderr


def test_memory_limit():
    res = run_python("x = bytearray(1 << 31)\n", SandboxLimits(timeout_s=5, memory_mb=256))
    assert res.status == "error" and "MemoryError" in res.stderr


# ---- network --------------------------------------------------------------------------------


@each_kernel_sandbox
def test_no_network_with_the_hook_disabled(iso):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    program = DISABLE_HOOK + f'''
import socket
print("interfaces", [n for _, n in socket.if_nameindex()])
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("CONNECTED")
except OSError as e:
    print("refused", type(e).__name__)
'''
    try:
        res = run_python(program, QUICK, iso)
        assert "HOOK OFF" in res.stdout and "interfaces ['lo']" in res.stdout, res
        assert "CONNECTED" not in res.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_the_hook_refuses_sockets_and_processes_early():
    assert run_python("import socket\n", QUICK).status == "error"
    assert run_python("import os\nos.system('true')\n", QUICK).status == "error"


# ---- without namespaces ---------------------------------------------------------------------


def test_the_fallback_refuses_untrusted_code_unless_allowed(tmp_path):
    fallback = Isolation()
    assert fallback.describe()["security_boundary"] is False
    assert "NOT a security boundary" in fallback.describe()["warning"]
    with pytest.raises(SandboxUnavailable, match="NOT a security boundary"):
        run_python("print(1)\n", QUICK, isolation_=fallback)
    with pytest.raises(SandboxUnavailable):
        check_add("    return a + b\n", limits=QUICK, isolation_=fallback)
    # Asked for, it runs, with its rlimits and hook.
    assert check_add("    return a + b\n", limits=QUICK, isolation_=fallback, allow_unsandboxed=True).passed
    target = tmp_path / "x.txt"
    res = run_python(f"open({str(target)!r}, 'w')\n", QUICK, isolation_=fallback, allow_unsandboxed=True)
    assert res.status == "error" and not target.exists()


def test_this_machine_has_the_kernel_sandbox_where_namespaces_work():
    """CI machines have working namespaces: there the kernel tests must run, not skip."""
    if not os.environ.get("CI"):
        pytest.skip("only CI promises Linux namespaces")
    assert isolation().boundary, isolation()


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_in_the_sandbox():
    """The sandbox and the checker must not break legitimate programs: all 164 reference solutions pass."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.evaluate.humaneval import check_completion, load_problems

    problems = load_problems()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: check_completion(p, p["canonical_solution"], SandboxLimits(timeout_s=10)),
                                problems))
    failed = [(p["task_id"], r.stderr[-200:]) for p, r in zip(problems, results) if not r.passed]
    assert not failed
