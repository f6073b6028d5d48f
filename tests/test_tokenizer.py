"""codeparrot tokenizer: exact round trip, special tokens, the saved folder, the report, the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from codeparrot_ls.prompt import END_OF_TEXT, FIM_MIDDLE, FIM_PREFIX, SPECIAL_TOKENS
from trainer import tokenizer as tk

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_MODULES = ["textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "heapq.py", "json/encoder.py"]
HELD_OUT = ["string.py", "json/decoder.py"]

CODE = (
    "class Cache:\n"
    "    def __init__(self, max_length: int = 10) -> None:\n"
    "        self._items = {}\n"
    "\n"
    "    def get(self, key):\n"
    "        if key not in self._items:\n"
    "            return None\n"
    "        return self._items[key]\n"
)

# Text that a byte-level BPE must give back exactly.
ROUND_TRIP = [
    CODE,
    "",
    "x",
    "def café(naïve='日本語'):\n\treturn '🐍👍🏽 ünïcödé'  # ∑ λ → ≠\n",
    "line one\r\nline two\r\n\tindented with a tab\r\n",
    "nul\x00byte and \x01\x02 controls\x7f and form feed\x0c\n",
    "no newline at the end    ",
    "\n\n\n   \n\t\n",
    "lone\rcarriage\rreturns",
    "non\u00a0breaking\u2003spaces\u200b and zero width joiner 👨\u200d👩\u200d👧",
    "combining: e\u0301 a\u0308; rtl: \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "'s 't 're 've 'm 'll 'd '''docstring''' \"\"\"doc\"\"\" f'{x!r:>10}'",
    "1234567890 0x1F 1_000_000 3.14e-10 ０１２ ٣",
    "        return  x  ==  y\n" * 3,
]


def texts(names: list[str]) -> list[str]:
    return [(STDLIB / n).read_text(encoding="utf-8") for n in names]


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    train = texts(TRAIN_MODULES)
    return {v: tk.train_tokenizer(train, vocab_size=768, variant=v) for v in tk.VARIANTS}


def write_shard(path: Path, records: list, extra_lines: list[str] = ()) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


@pytest.fixture
def shard_corpus(tmp_path) -> Path:
    """A corpus in the corpus stage's format: train and valid jsonl.gz shards, plus bad lines."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    train = [{"content": t, "path": n} for n, t in zip(TRAIN_MODULES, texts(TRAIN_MODULES))]
    write_shard(corpus / "train-00000.jsonl.gz", train[:3], ["{not json", json.dumps({"path": "no_content.py"})])
    write_shard(corpus / "train-00001.jsonl.gz", train[3:])
    valid = [{"content": t, "path": n} for n, t in zip(HELD_OUT, texts(HELD_OUT))]
    write_shard(corpus / "valid-00000.jsonl.gz", valid)
    return corpus


@pytest.mark.parametrize("variant", sorted(tk.VARIANTS))
def test_round_trip_is_exact(trained, variant):
    tok = trained[variant]
    for text in ROUND_TRIP:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text, (variant, text)
    # one piece per pre-token, no byte lost or added between them
    for text in ROUND_TRIP[:5]:
        pieces = tok.pre_tokenizer.pre_tokenize_str(text)
        assert "".join(text[a:b] for _, (a, b) in pieces) == text


def test_special_tokens_come_first_in_prompt_order(trained):
    for tok in trained.values():
        assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
        assert tok.token_to_id(END_OF_TEXT) == 0
        assert tok.encode(FIM_PREFIX + "x = 1" + FIM_MIDDLE).ids[0] == tok.token_to_id(FIM_PREFIX)


def test_base_alphabet_has_all_256_bytes(trained):
    for tok in trained.values():
        assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(tok.get_vocab())
        assert len(pre_tokenizers.ByteLevel.alphabet()) == 256
        assert tok.get_vocab_size() == 768
    tok = trained[tk.DEFAULT_VARIANT]
    every_code_point = "".join(map(chr, range(256)))  # UTF-8 bytes 0x00-0xbf, 0xc2, 0xc3
    assert tok.decode(tok.encode(every_code_point).ids) == every_code_point


def piece_texts(tok: Tokenizer, text: str) -> list[str]:
    return [text[a:b] for _, (a, b) in tok.pre_tokenizer.pre_tokenize_str(text)]


def test_pre_tokenization_of_the_code_variants(trained):
    line = "):\n        return self._items[key]\n"
    assert piece_texts(trained["gpt2"], line) == [
        "):", "\n       ", " return", " self", "._", "items", "[", "key", "]", "\n"]
    assert piece_texts(trained["lines"], line) == [
        "):", "\n        ", "return", " self", ".", "_items", "[", "key", "]", "\n"]
    assert piece_texts(trained["lines-punct"], line) == [
        "):\n        ", "return", " self", ".", "_items", "[", "key", "]\n"]
    assert piece_texts(trained["code"], line) == [
        "):\n        ", "return", " self", "._items", "[key", "]\n"]
    assert piece_texts(trained["code-greedy"], "x().append(y)") == ["x", "().append", "(y", ")"]
    assert piece_texts(trained["code-digits"], "n = 1234567") == ["n", " =", " ", "123", "456", "7"]
    # GPT-2's contraction rule cuts string literals; the code variants do not
    assert piece_texts(trained["gpt2"], "'store'")[:2] == ["'s", "tore"]
    assert piece_texts(trained["code"], "'store'")[:1] == ["'store"]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown pre-tokenization variant"):
        tk.build_pretokenizer("bert")


def test_cli_trains_saves_and_reports(shard_corpus, tmp_path):
    out = tmp_path / "tok"
    assert tk.main(["--corpus", str(shard_corpus), "--vocab-size", "1024", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())

    train = texts(TRAIN_MODULES)
    assert report["variant"] == tk.DEFAULT_VARIANT
    assert report["vocab_size"] == 1024
    assert report["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert report["training"]["files"] == len(train)
    assert report["training"]["bytes"] == sum(len(t.encode()) for t in train)
    assert report["training"]["skipped"] == {"bad_json": 1, "no_content": 1}
    assert report["training"]["seconds"] >= 0

    # chars/token and fertility are those of the valid split, recomputed here independently
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    valid = texts(HELD_OUT)
    n_tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in valid)
    assert report["eval"]["files"] == len(valid)
    assert report["chars_per_token"] == pytest.approx(sum(map(len, valid)) / n_tokens)
    assert report["fertility"] == pytest.approx(n_tokens / sum(len(t.split()) for t in valid))
    assert 1.5 < report["chars_per_token"] < 10

    kws = report["keywords"]
    assert set(kws["table"]) >= {"def", "return", "lambda", "match", "case", "_"}
    for kw, row in kws["table"].items():
        assert row["bare"] == (len(tok.encode(kw).ids) == 1)
        assert row["after_space"] == (len(tok.encode(" " + kw).ids) == 1)
        assert (kw in kws["not_single"]) != row["bare"]
    assert kws["all_single"] == (not kws["not_single"])

    longest = report["longest_tokens"]
    assert len(longest) == 20 and [len(t) for t in longest] == sorted(map(len, longest), reverse=True)
    vocab = [tok.decode([i]) for i in range(tok.get_vocab_size()) if tok.id_to_token(i) not in SPECIAL_TOKENS]
    assert set(longest) <= set(vocab)
    assert [len(t) for t in longest] == sorted(map(len, vocab), reverse=True)[:20]


def test_saved_folder_loads_in_transformers_and_tokenizers(shard_corpus, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    assert tk.main(["--corpus", str(shard_corpus), "--vocab-size", "600", "--output", str(out)]) == 0
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    assert auto.eos_token == END_OF_TEXT and auto.eos_token_id == 0
    assert auto.convert_tokens_to_ids(FIM_MIDDLE) == raw.token_to_id(FIM_MIDDLE)
    assert len(auto) == raw.get_vocab_size() == 600
    for text in ROUND_TRIP:
        ids = raw.encode(text).ids
        assert auto(text)["input_ids"] == ids
        assert auto.decode(ids) == text


def test_python_folder_and_max_files(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for name, text in zip(TRAIN_MODULES, texts(TRAIN_MODULES)):
        (src / "pkg" / Path(name).name).write_text(text, encoding="utf-8")
    (src / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (src / "notes.txt").write_text("not python")
    out = tmp_path / "tok"
    assert tk.main(["--corpus", str(src), "--vocab-size", "512", "--output", str(out), "--variant", "gpt2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["variant"] == "gpt2"
    assert report["training"]["files"] == len(TRAIN_MODULES)
    assert report["training"]["skipped"] == {"not_utf8": 1}
    assert report["chars_per_token"] is None  # a plain folder has no valid split

    assert tk.main(["--corpus", str(src), "--vocab-size", "512", "--output", str(out), "--max-files", "2"]) == 0
    assert json.loads((out / "report.json").read_text())["training"]["files"] == 2


def test_codeparrot_cli_dispatches_to_the_tokenizer(shard_corpus, tmp_path):
    from trainer.cli import main as codeparrot

    out = tmp_path / "tok"
    assert codeparrot(["tokenizer", "--corpus", str(shard_corpus), "--vocab-size", "512", "--output", str(out),
                       "--max-files", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["training"]["files"] == 1


def test_unusable_corpus_exits_2(tmp_path, capsys):
    out = tmp_path / "tok"
    assert tk.main(["--corpus", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert tk.main(["--corpus", str(empty), "--output", str(out)]) == 2
    assert "no train-*.jsonl.gz shards and no .py files" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    write_shard(bad / "train-00000.jsonl.gz", [{"path": "a.py"}, {"content": ""}], ["[1, 2"])
    assert tk.main(["--corpus", str(bad), "--output", str(out)]) == 2
    assert "no usable records" in capsys.readouterr().err
    assert not out.exists()  # nothing was trained or written

    with pytest.raises(SystemExit) as exc:
        tk.main(["--corpus", str(empty), "--output", str(out), "--variant", "bert"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        tk.main(["--corpus", str(empty), "--output", str(out), "--vocab-size", "100"])
    assert exc.value.code == 2


def test_module_entry_point_exits_2_on_missing_corpus(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.tokenizer", "--corpus", str(tmp_path / "nope"),
                           "--output", str(tmp_path / "tok")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "codeparrot tokenizer: error: corpus folder" in proc.stderr
