"""bench/bench_server_ab.py: two real servers from two source trees on one model, requests alternating."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_server_ab  # noqa: E402


def test_both_trees_answer_every_position(tiny_onnx_dir, tmp_path, capsys):
    before = tmp_path / "before"
    shutil.copytree(ROOT / "codeparrot_ls", before / "codeparrot_ls",
                    ignore=shutil.ignore_patterns("__pycache__", "models"))
    out = tmp_path / "ab.json"
    assert bench_server_ab.main(["--model", str(tiny_onnx_dir), "--before", str(before), "--positions", "3",
                                 "--threads", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["trees"]["before"] == str(before)
    assert [len(v) for v in got["latency_ms"].values()] == [3, 3]
    assert all(ms > 0 for v in got["latency_ms"].values() for ms in v)
    assert "after / before per position" in capsys.readouterr().out


def test_a_folder_without_the_server_is_refused(tiny_onnx_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench_server_ab.main(["--model", str(tiny_onnx_dir), "--before", str(tmp_path)])
    assert e.value.code == 2
