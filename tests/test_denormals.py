"""Denormal floats are flushed to zero on every thread that runs the ONNX graph."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                                reason="the flush-to-zero bits are set on x86-64 Linux only")


def run_fresh(code: str) -> str:
    """`code` in a new interpreter: a thread's floating-point mode must not leak in from other tests."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_flushing_is_per_thread_and_only_where_asked():
    out = run_fresh("""
        import threading
        from codeparrot_ls.engine.denormals import denormals_flushed, flush_denormals_on_this_thread
        seen = []
        def worker():
            seen.append(denormals_flushed())
            seen.append(flush_denormals_on_this_thread())
            seen.append(denormals_flushed())
        t = threading.Thread(target=worker); t.start(); t.join()
        print(seen, denormals_flushed())
    """)
    assert out.split() == ["[False,", "True,", "True]", "False"]


def test_the_thread_that_runs_passes_flushes_even_if_another_loaded_the_model(tiny_onnx_dir):
    """ONNX Runtime sets the mode only on the thread that created the process's first session;
    the server loads the model on one thread and decodes on another."""
    out = run_fresh(f"""
        import threading
        import numpy as np
        from codeparrot_ls.engine import load_engine
        from codeparrot_ls.engine.denormals import denormals_flushed
        box = {{}}
        t = threading.Thread(target=lambda: box.setdefault("engine", load_engine({str(tiny_onnx_dir)!r})))
        t.start(); t.join()
        before = denormals_flushed()
        box["engine"].forward(np.array([[1, 2, 3]], np.int64), None)
        print(before, denormals_flushed())
    """)
    assert out.split() == ["False", "True"]
