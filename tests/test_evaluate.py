"""`codeparrot evaluate` and `codeparrot complete`: the math on hand-made cases, then
every task end to end on the tiny model through the real engines."""

from __future__ import annotations

import json
import math

import pytest

from trainer.evaluate.humaneval import check_completion, load_problems, pass_at_k
from trainer.evaluate.line_completion import Position, build_requests, edit_similarity, exact_match, sample_positions
from trainer.evaluate.data import DataStats
from trainer.evaluate.perplexity import PerplexityTotals, token_nats, windows
from trainer.sandbox import Isolation, SandboxLimits

# ---- pass@k ---------------------------------------------------------------------------------


def test_pass_at_k_against_hand_computed_values():
    # n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10.
    assert pass_at_k([5], [2], ks=(1, 2)) == pytest.approx({"pass@1": 0.4, "pass@2": 0.7})
    # n=10, c=1: pass@10 = 1 (every draw of 10 includes the correct one); pass@5 = 1 - C(9,5)/C(10,5) = 0.5.
    assert pass_at_k([10], [1], ks=(5, 10)) == pytest.approx({"pass@5": 0.5, "pass@10": 1.0})
    # Averaged over problems; k above the smallest n is not reported.
    assert pass_at_k([4, 4], [4, 0], ks=(1, 10, 100)) == pytest.approx({"pass@1": 0.5})
    assert pass_at_k([200], [0]) == {"pass@1": 0.0, "pass@10": 0.0, "pass@100": 0.0}
    assert pass_at_k([3], [1], ks=(1,)) == pytest.approx({"pass@1": 1 / 3})


def test_humaneval_program_passes_with_the_canonical_solution_and_fails_with_a_wrong_one():
    problem = load_problems(limit=1)[0]
    assert len(load_problems()) == 164
    good = check_completion(problem, problem["canonical_solution"], SandboxLimits(timeout_s=10))
    assert good.passed, good.stderr
    bad = check_completion(problem, "    return None\n", SandboxLimits(timeout_s=10))
    assert bad.status == "failed"


# ---- perplexity math --------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens,context,stride", [(2, 8, 4), (9, 8, 4), (50, 8, 3), (50, 8, 8), (17, 16, 1)])
def test_sliding_windows_score_every_token_once_within_the_context(n_tokens, context, stride):
    scored = []
    for begin, first, end in windows(n_tokens, context, stride):
        assert end - 1 - begin <= context          # inputs fed
        assert begin <= first - 1                   # every target has its previous token as input
        scored += range(first, end)
    assert scored == list(range(1, n_tokens))


def test_token_nats_is_the_cross_entropy():
    import numpy as np

    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]], np.float32)
    assert token_nats(logits, np.array([1, 0])) == pytest.approx([math.log(2), math.log(4 / 3)], rel=1e-6)


def test_perplexity_summary_units_and_overflow():
    t = PerplexityTotals(nats=10 * math.log(2), tokens=5, chars=20)
    s = t.summary()
    assert s["loss"] == pytest.approx(2 * math.log(2)) and s["perplexity"] == pytest.approx(4.0)
    assert s["bits_per_char"] == pytest.approx(0.5)
    assert PerplexityTotals(nats=1e6, tokens=1, chars=1).summary()["perplexity"] == math.inf


def test_perplexity_equals_the_models_own_loss(tiny_checkpoint_dir, tmp_path):
    """Short file (one window): the mean loss is exactly transformers' loss on END_OF_TEXT + the file."""
    import torch
    from transformers import GPT2LMHeadModel

    from trainer.evaluate.common import encode, open_engine
    from trainer.evaluate.perplexity import evaluate_perplexity

    text = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
    (tmp_path / "a.py").write_text(text)
    engine = open_engine(tiny_checkpoint_dir, "torch")
    out = evaluate_perplexity(engine, str(tmp_path))["results"]
    ids = [engine.info.eos_id] + encode(engine.tokenizer, text)
    model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint_dir).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert out["tokens"] == len(ids) - 1
    assert out["loss"] == pytest.approx(ref, rel=1e-5)
    assert out["bits_per_char"] == pytest.approx(ref * (len(ids) - 1) / math.log(2) / len(text), rel=1e-5)


def test_sliding_window_matches_a_manual_chunked_computation(tiny_checkpoint_dir, tmp_path):
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    from conftest import sample_texts
    from trainer.evaluate.common import encode, open_engine
    from trainer.evaluate.perplexity import evaluate_perplexity

    text = sample_texts()[4][:1200]  # shlex.py: several windows of 64
    (tmp_path / "long.py").write_text(text)
    engine = open_engine(tiny_checkpoint_dir, "torch")
    out = evaluate_perplexity(engine, str(tmp_path), context=64, stride=32)["results"]
    ids = [engine.info.eos_id] + encode(engine.tokenizer, text)
    model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint_dir).eval()
    nats = 0.0
    with torch.no_grad():
        for begin, first, end in windows(len(ids), 64, 32):
            logits = model(torch.tensor([ids[begin:end - 1]])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            targets = torch.tensor(ids[first:end])
            rows = torch.arange(first - 1 - begin, end - 1 - begin)
            nats -= logp[rows, targets].sum().item()
    assert out["tokens"] == len(ids) - 1 and out["forward_calls"] > 3
    assert out["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert np.isfinite(out["perplexity"])


# ---- line completion --------------------------------------------------------------------------


def test_line_completion_scores_on_hand_made_cases():
    assert exact_match("x = foo(a,  b)  ", "x = foo(a, b)")
    assert not exact_match("x=1", "x = 1")
    assert not exact_match("", "return x")
    assert edit_similarity("return x", "return x") == 100.0
    assert edit_similarity("abc", "abd") == pytest.approx(200 / 3)   # 1 substitution: 2 * 2 / 6 (Indel ratio)
    assert edit_similarity("", "return") == 0.0
    assert edit_similarity("  return a ", "return a") == 100.0


SOURCE = "import os\n\n\ndef f(x):\n    if x:\n        return os.path.join(x, 'a')\n    return None\n"


def test_positions_are_seeded_and_well_formed(tmp_path):
    (tmp_path / "m.py").write_text(SOURCE)
    (tmp_path / "empty.py").write_text("\n\n")
    (tmp_path / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    stats = DataStats()
    a = sample_positions(str(tmp_path), 3, seed=1, cursor="indent", stats=stats)
    assert stats.skipped == 2 and stats.documents == 1
    assert a == sample_positions(str(tmp_path), 3, seed=1, cursor="indent", stats=DataStats())
    for p in a:
        line = SOURCE.split("\n")[p.line]
        assert p.prefix.endswith(line[: len(line) - len(line.lstrip())]) and p.target == line.strip()
        assert SOURCE == p.prefix + p.target + p.suffix
    rand = sample_positions(str(tmp_path), 4, seed=2, cursor="random", stats=DataStats())
    assert all(p.target and SOURCE == p.prefix + p.target + p.suffix for p in rand)
    assert len(sample_positions(str(tmp_path), 100, seed=0, cursor="indent", stats=DataStats())) == 4


def test_prompts_heal_like_the_server_and_keep_fim_in_budget(tiny_checkpoint_dir):
    from codeparrot_ls.healing import should_heal
    from codeparrot_ls.prompt import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
    from trainer.evaluate.common import open_engine

    engine = open_engine(tiny_checkpoint_dir, "torch")
    eos = engine.info.eos_id
    prefix = SOURCE[: SOURCE.index("return os")]
    pos = Position("m.py", 5, prefix, "return os.path.join(x, 'a')", SOURCE[SOURCE.index("\n    return None"):])
    mid_word = Position("m.py", 5, prefix + "return o", "s.path.join(x, 'a')", pos.suffix)
    (req, req_mid), layouts = build_requests(engine, [pos, mid_word], "off", 8, healing=True, suffix_share=0.25)
    assert layouts == ["l2r", "l2r"]
    # The server's policy: heal only where the cursor is not a pre-token boundary.
    assert bool(req.required_prefix) == should_heal(engine.tokenizer, prefix)
    assert req.prompt_ids[0] == eos
    assert engine.tokenizer.decode(req.prompt_ids[1:], skip_special_tokens=True) + req.required_prefix == prefix
    assert req_mid.required_prefix.endswith("o")
    assert (engine.tokenizer.decode(req_mid.prompt_ids[1:], skip_special_tokens=True) + req_mid.required_prefix
            == mid_word.prefix)
    sp = engine.info.special_ids
    (fim,), layouts = build_requests(engine, [pos], "psm", 8, healing=True, suffix_share=0.25)
    ids = fim.prompt_ids
    assert layouts == ["psm"] and ids[:2] == [eos, sp[FIM_PREFIX]] and ids[-1] == sp[FIM_MIDDLE] and sp[FIM_SUFFIX] in ids
    assert len(ids) <= engine.info.n_positions - 8   # the prompt leaves room for the new tokens


# ---- end to end ------------------------------------------------------------------------------


def _run(argv, capsys):
    from trainer.evaluate import main

    rc = main(argv)
    return rc, capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["tiny_checkpoint_dir", "tiny_onnx_dir"])
def test_every_task_end_to_end(folder, request, tmp_path, capsys):
    model = request.getfixturevalue(folder)
    data = tmp_path / "data"
    data.mkdir()
    (data / "m.py").write_text(SOURCE * 3)
    engine = "torch" if folder == "tiny_checkpoint_dir" else "onnx"

    rc, out = _run(["--model", str(model), "--task", "perplexity", "--data", str(data), "--engine", engine,
                    "--output", str(tmp_path / "ppl.json")], capsys)
    assert rc == 0, out.err
    ppl = json.loads((tmp_path / "ppl.json").read_text())
    assert ppl["model"]["engine"] == engine and ppl["results"]["tokens"] > 0 and "bits_per_char" in out.out

    lc_args = ["--model", str(model), "--task", "line-completion", "--data", str(data), "--engine", engine,
               "--limit", "6", "--max_new_tokens", "8", "--batch_size", "4"]
    rc, out = _run(lc_args + ["--output", str(tmp_path / "lc1.json")], capsys)
    assert rc == 0, out.err
    rc, _ = _run(lc_args + ["--output", str(tmp_path / "lc2.json")], capsys)
    lc1, lc2 = (json.loads((tmp_path / f"lc{i}.json").read_text()) for i in (1, 2))
    assert set(lc1["results"]) == {"no_fim", "fim_spm", "as_served"} and lc1["results"]["no_fim"]["positions"] == 6
    served = lc1["results"]["as_served"]
    assert sum(v["positions"] for v in served["by_suffix"].values()) == 6 and "by_suffix.none.exact_match" in out.out
    assert lc1["samples"] == lc2["samples"]  # reproducible
    # Writing at the end of a file: the server's choice there is left to right.
    rc, out = _run(lc_args + ["--fim", "served", "--after-cursor", "none", "--output", str(tmp_path / "eof.json")],
                   capsys)
    eof = json.loads((tmp_path / "eof.json").read_text())["results"]
    assert rc == 0 and set(eof) == {"as_served"} and set(eof["as_served"]["by_suffix"]) == {"none"}
    assert eof["as_served"]["fim_share"] == 0.0

    rc, out = _run(["--model", str(model), "--task", "humaneval", "--engine", engine, "--limit", "2",
                    "--num_samples", "2", "--temperatures", "0", "0.8", "--max_new_tokens", "16",
                    "--output", str(tmp_path / "he.json")], capsys)
    assert rc == 0, out.err
    he = json.loads((tmp_path / "he.json").read_text())
    assert he["results"]["t=0.8"]["samples_per_problem"] == 2 and "pass@1" in he["results"]["t=0"]
    assert len(he["samples"]) == 2 * 1 + 2 * 2 and he["sandbox"]["layers"]


def test_bad_model_folder_and_usage_errors_exit_2(tmp_path, tiny_checkpoint_dir, capsys):
    rc, out = _run(["--model", str(tmp_path), "--task", "perplexity", "--data", str(tmp_path)], capsys)
    assert rc == 2 and "tokenizer.json" in out.err
    rc, out = _run(["--model", str(tmp_path / "nope"), "--task", "humaneval"], capsys)
    assert rc == 2 and "does not exist" in out.err
    rc, out = _run(["--model", str(tiny_checkpoint_dir), "--task", "perplexity"], capsys)
    assert rc == 2 and "--data" in out.err
    rc, out = _run(["--model", str(tiny_checkpoint_dir), "--task", "bogus"], capsys)
    assert rc == 2
    rc, out = _run(["--model", str(tiny_checkpoint_dir), "--task", "humaneval", "--engine", "onnx"], capsys)
    assert rc == 2 and "ONNX" in out.err


def test_humaneval_without_a_kernel_sandbox_refuses_unless_allowed(tiny_checkpoint_dir, tmp_path, capsys,
                                                                   monkeypatch):
    import trainer.evaluate.humaneval

    monkeypatch.setattr(trainer.evaluate.humaneval, "isolation", lambda: Isolation())  # a machine without namespaces
    argv = ["--model", str(tiny_checkpoint_dir), "--task", "humaneval", "--engine", "torch", "--limit", "1",
            "--max_new_tokens", "4", "--output", str(tmp_path / "he.json")]
    rc, out = _run(argv, capsys)
    assert rc == 1 and "NOT a security boundary" in out.err and "--allow-unsandboxed" in out.err
    assert not (tmp_path / "he.json").exists()
    rc, out = _run(argv + ["--allow-unsandboxed"], capsys)
    assert rc == 0, out.err
    assert "WARNING" in out.err and "NOT a security boundary" in out.err
    sandbox = json.loads((tmp_path / "he.json").read_text())["sandbox"]
    assert sandbox["security_boundary"] is False and "NOT a security boundary" in sandbox["warning"]


# ---- complete --------------------------------------------------------------------------------


def test_complete_puts_the_cursor_at_the_end_of_a_line():
    from trainer.complete import cursor_at_line_end

    assert cursor_at_line_end("a\nbb\nc", 2) == len("a\nbb")
    assert cursor_at_line_end("a\nbb\nc", None) == len("a\nbb\nc")
    with pytest.raises(ValueError):
        cursor_at_line_end("a\n", 5)


def test_complete_prints_samples_and_rejects_bad_input(tiny_checkpoint_dir, tmp_path, capsys):
    from trainer.complete import main

    assert main(["--model", str(tiny_checkpoint_dir), "--prompt", "def f(x):\n", "--num_samples", "2",
                 "--max_new_tokens", "6", "--engine", "torch"]) == 0
    assert capsys.readouterr().out.count("----- completion") == 2
    src = tmp_path / "m.py"
    src.write_text(SOURCE)
    assert main(["--model", str(tiny_checkpoint_dir), "--file", str(src), "--line", "5", "--max_new_tokens", "4",
                 "--engine", "torch"]) == 0
    capsys.readouterr()
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert main(["--model", str(tiny_checkpoint_dir), "--prompt", "x", "--file", str(src)]) == 2
    assert "exactly one" in capsys.readouterr().err


@pytest.mark.slow
def test_humaneval_resumes_a_killed_run_from_its_journal(tiny_checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "he.json"
    argv = ["--model", str(tiny_checkpoint_dir), "--task", "humaneval", "--engine", "torch", "--limit", "2",
            "--num_samples", "3", "--batch_size", "2", "--temperatures", "0.8", "--max_new_tokens", "8",
            "--output", str(out)]
    rc, res = _run(argv, capsys)
    assert rc == 0, res.err
    full = json.loads(out.read_text())
    journal = tmp_path / "he.json.samples.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 6 and full["resumed_samples"] == 0
    # A run killed after 3 samples, one of them half written.
    journal.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    rc, res = _run(argv, capsys)
    assert rc == 0, res.err
    resumed = json.loads(out.read_text())
    assert resumed["resumed_samples"] == 3
    key = lambda r: (r["task_id"], r["index"])  # noqa: E731
    assert sorted(map(key, resumed["samples"])) == sorted(map(key, full["samples"]))
    by_key = {key(r): r["completion"] for r in full["samples"]}
    assert all(by_key[key(r)] == r["completion"] for r in resumed["samples"])  # same seeds, same samples
    rc, res = _run(argv[:-2] + ["--top_p", "0.5", "--output", str(out)], capsys)
    assert rc == 2 and "other settings" in res.err


def test_a_corpus_folder_gives_its_validation_shards_only(tiny_corpus_dir):
    from trainer.evaluate.data import data_files, iter_documents

    files = data_files(tiny_corpus_dir)
    assert [f.name for f in files] == ["valid-00000.jsonl.gz"]
    stats = DataStats()
    assert len(list(iter_documents(tiny_corpus_dir, stats))) == 2 and stats.skipped == 0


def test_out_of_range_options_exit_2(tiny_checkpoint_dir, tmp_path, capsys):
    (tmp_path / "m.py").write_text(SOURCE)
    for bad in (["--batch-size", "0"], ["--limit", "-1"], ["--stride", "0"]):
        rc, out = _run(["--model", str(tiny_checkpoint_dir), "--engine", "torch", "--task", "line-completion",
                        "--data", str(tmp_path), *bad], capsys)
        assert rc == 2 and "must be >= 1" in out.err


def test_onnx_export_scores_like_its_checkpoint(tiny_checkpoint_dir, tiny_onnx_dir, tmp_path):
    from trainer.evaluate.common import open_engine
    from trainer.evaluate.perplexity import evaluate_perplexity

    (tmp_path / "m.py").write_text(SOURCE * 4)
    torch_out = evaluate_perplexity(open_engine(tiny_checkpoint_dir, "torch"), str(tmp_path), 64, 32)["results"]
    onnx_out = evaluate_perplexity(open_engine(tiny_onnx_dir, "onnx", "fp32"), str(tmp_path), 64, 32)["results"]
    int8_out = evaluate_perplexity(open_engine(tiny_onnx_dir, "onnx", "int8"), str(tmp_path), 64, 32)["results"]
    assert onnx_out["tokens"] == torch_out["tokens"]
    assert onnx_out["loss"] == pytest.approx(torch_out["loss"], rel=1e-5)
    assert int8_out["loss"] == pytest.approx(torch_out["loss"], rel=0.05)
