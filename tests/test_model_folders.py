"""Broken model folders are refused at load: broken copies of the real exported tiny model,
served by the real `codeparrot-ls` process. Named with `--model` or $CODEPARROT_LS_MODEL:
a message on stderr and exit code 2; named by the editor: an `error` status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_server import serve

CLI = [sys.executable, "-m", "codeparrot_ls.cli"]


def edit_json(folder, name, change) -> None:
    path = folder / name
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data)), encoding="utf-8")


def with_keys(**values):
    def change(data):
        data.update(values)
        return data
    return change


def without_input(name):
    def change(data):
        data["inputs"] = [i for i in data["inputs"] if i != name]
        return data
    return change


# (what is broken, files and their change, words the message must hold); the tiny model has
# 2 layers, 2 heads of 32, 256 positions.
BROKEN = {
    "n_positions beyond the graph's": (
        [("config.json", with_keys(n_positions=1024)), ("export.json", with_keys(n_positions=1024))],
        ["n_positions is 1024", "position"]),
    "n_layer 1e9": ([("config.json", with_keys(n_layer=1e9))], ["n_layer", "1000000000.0"]),
    "a negative size": ([("export.json", with_keys(n_embd=-64))], ["n_embd", "-64"]),
    "export.json is a list": ([("export.json", lambda data: [data])], ["export.json", "JSON object"]),
    "config.json and export.json disagree": ([("config.json", with_keys(n_layer=3))], ["n_layer", "different models"]),
    "both say 3 layers, the graph has 2": (
        [("config.json", with_keys(n_layer=3)), ("export.json", with_keys(n_layer=3))], ["n_layer is 3", "graph"]),
    "heads x head size is not the width": ([("export.json", with_keys(head_dim=16))], ["head_dim 16"]),
    "export.json lists other inputs": ([("export.json", without_input("logits_to_keep"))], ["inputs"]),
    "the model's vocabulary is smaller than the tokenizer's": (
        [("config.json", with_keys(vocab_size=100)), ("export.json", with_keys(vocab_size=100))], ["tokenizer"]),
}


def broken_copy(tiny_onnx_dir, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx_dir, folder)
    edits, words = BROKEN[case]
    for name, change in edits:
        edit_json(folder, name, change)
    return folder, words


def run_cli(*args, env=None):
    server_env = {k: v for k, v in os.environ.items() if k != "CODEPARROT_LS_MODEL"}
    server_env.update(env or {})
    return subprocess.run([*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, env=server_env)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_folder_named_at_start_exits_2_with_a_clear_message(tiny_onnx_dir, tmp_path, case):
    folder, words = broken_copy(tiny_onnx_dir, tmp_path, case)
    done = run_cli("--model", str(folder))
    assert done.returncode == 2, done.stderr
    message = [ln for ln in done.stderr.splitlines() if ln.startswith("codeparrot-ls: bad model (--model)")]
    assert message, done.stderr
    assert all(w in message[0] for w in words), message[0]


def test_a_broken_folder_from_the_environment_exits_2(tiny_onnx_dir, tmp_path):
    folder, _ = broken_copy(tiny_onnx_dir, tmp_path, "n_positions beyond the graph's")
    done = run_cli(env={"CODEPARROT_LS_MODEL": str(folder)})
    assert done.returncode == 2
    assert "codeparrot-ls: bad model (CODEPARROT_LS_MODEL)" in done.stderr and "n_positions is 1024" in done.stderr


@pytest.mark.parametrize("case", ["n_positions beyond the graph's", "export.json is a list"])
async def test_a_broken_folder_from_the_editor_is_an_error_status(tiny_onnx_dir, tmp_path, case):
    folder, words = broken_copy(tiny_onnx_dir, tmp_path, case)
    async with serve(init={"model": str(folder)}, wait=False) as s:
        assert await s.wait_status() == "error"
        assert all(w in s.statuses[-1].message for w in words), s.statuses[-1].message


def test_the_intact_copy_still_loads(tiny_onnx_dir, tmp_path):
    from codeparrot_ls.engine import load_engine

    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx_dir, folder)
    assert load_engine(folder, threads=1).info.n_positions == 256
