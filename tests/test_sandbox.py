"""The sandbox that runs generated code: real child processes, real limits."""

from __future__ import annotations

import os
import uuid

import pytest

from trainer.sandbox import Isolation, SandboxLimits, isolation, run_python

QUICK = SandboxLimits(timeout_s=5)


def test_correct_program_passes_and_wrong_one_fails():
    assert run_python("def f(x):\n    return x + 1\nassert f(1) == 2\n", QUICK).status == "passed"
    bad = run_python("def f(x):\n    return x - 1\nassert f(1) == 2\n", QUICK)
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_infinite_loop_is_killed_at_the_timeout():
    res = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1))
    assert res.status == "timeout"
    assert res.returncode == -9  # SIGKILLed with its process group, not left running


def test_early_exit_with_status_zero_does_not_count_as_a_pass():
    # The pass token arrives on stdin, unseen by the program: exiting early cannot fake success.
    assert run_python("import os\nos._exit(0)\n", QUICK).status == "failed"
    assert run_python("import sys\nsys.exit(0)\n", QUICK).status == "failed"


@pytest.mark.parametrize("guard", [True, False])
def test_write_outside_the_work_directory_is_blocked(tmp_path, guard):
    if not guard and not isolation().mount:
        pytest.skip("no mount namespace here: only the Python audit hook guards the filesystem")
    target = tmp_path / f"escape-{uuid.uuid4().hex}.txt"
    res = run_python(f"open({str(target)!r}, 'w').write('x')\n", QUICK, guard=guard)
    assert res.status == "failed"
    assert not target.exists()
    os_write = run_python(f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n",
                          QUICK, guard=guard)
    assert os_write.status == "failed" and not target.exists()


def test_writes_inside_the_work_directory_work_and_are_thrown_away():
    res = run_python("open('scratch.txt', 'w').write('hello')\nprint(open('scratch.txt').read())\n"
                     "import os\nprint(os.getcwd())\n", QUICK)
    assert res.passed and "hello" in res.stdout
    workdir = res.stdout.strip().splitlines()[-1]
    assert not os.path.exists(workdir)


def test_deleting_files_outside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    res = run_python(f"import os\nos.remove({str(victim)!r})\n", QUICK)
    assert res.status == "failed" and victim.read_text() == "precious"


def test_no_network_and_no_subprocesses():
    assert run_python("import socket\n", QUICK).status == "failed"
    assert run_python("import os\nos.system('true')\n", QUICK).status == "failed"
    assert run_python("import os\nos.fork()\n", QUICK).status == "failed"


def test_memory_limit():
    res = run_python("x = bytearray(1 << 31)\n", SandboxLimits(timeout_s=5, memory_mb=256))
    assert res.status == "failed" and "MemoryError" in res.stderr


def test_network_namespace_when_available():
    iso = isolation()
    if not iso.prefix:
        pytest.skip("unshare is not usable here")
    probe = "import socket\nprint([n for _, n in socket.if_nameindex()])\n"
    res = run_python(probe, QUICK, guard=False)
    assert res.passed and "['lo']" in res.stdout


def test_fallback_without_namespaces_still_guards(tmp_path):
    target = tmp_path / "x.txt"
    res = run_python(f"open({str(target)!r}, 'w')\n", QUICK, isolation_=Isolation())
    assert res.status == "failed" and not target.exists()


def test_files_written_inside_are_capped():
    big = "open('big.bin', 'wb').write(b'x' * (3 << 20))\n"
    res = run_python(big, SandboxLimits(timeout_s=5, file_size_mb=2))
    assert res.status == "failed"  # RLIMIT_FSIZE: SIGXFSZ or EFBIG
    if isolation().mount:  # and all files together fit a tmpfs of 4 x the file-size limit
        many = "for i in range(6):\n    open(f'f{i}.bin', 'wb').write(b'x' * (3 << 19))\n"
        res = run_python(many, SandboxLimits(timeout_s=5, file_size_mb=2))
        assert res.status == "failed" and "No space left" in res.stderr


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_in_the_sandbox():
    """The guard must not break legitimate programs: all 164 reference solutions pass."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.eval_humaneval import load_problems, program

    problems = load_problems()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: run_python(program(p, p["prompt"], p["canonical_solution"]),
                                                     SandboxLimits(timeout_s=10)), problems))
    failed = [(p["task_id"], r.stderr[-200:]) for p, r in zip(problems, results) if not r.passed]
    assert not failed


def test_the_kernel_refuses_new_processes_without_the_guard():
    if os.geteuid() == 0:
        pytest.skip("RLIMIT_NPROC does not bind a real root process")
    res = run_python("import os\nos.fork()\n", QUICK, guard=False)
    assert res.status == "failed" and "Resource temporarily unavailable" in res.stderr
