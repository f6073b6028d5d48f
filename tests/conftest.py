"""Shared fixtures: a tiny real tokenizer and a tiny random model, built once per session.

Everything is made by the project's own code from files on this machine (the
standard library), so no test needs the network.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A handful of real, stable stdlib modules: enough text for a small BPE.
SAMPLE_MODULES = ["argparse.py", "textwrap.py", "json/encoder.py", "json/decoder.py", "shlex.py",
                  "fnmatch.py", "string.py", "dataclasses.py", "glob.py", "heapq.py"]


def sample_texts() -> list[str]:
    return [(STDLIB / m).read_text(encoding="utf-8") for m in SAMPLE_MODULES]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A real byte-level BPE (vocab 1024) trained on a few stdlib modules."""
    from trainer.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer(sample_texts(), vocab_size=1024)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A Hugging Face checkpoint folder: 2 layers x 64 wide, random weights, with tokenizer files."""
    import shutil

    import torch
    from tokenizers import Tokenizer

    from trainer.model import build_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("checkpoint")
    tok = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    model = build_model("test", tok)
    model.save_pretrained(out)
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, tiny_checkpoint_dir) -> Path:
    """`codeparrot export --quantize int8` of `tiny_checkpoint_dir`: model.onnx, model.int8.onnx, tokenizer, export.json."""
    from trainer.export import main as export_main

    out = tmp_path_factory.mktemp("onnx")
    rc = export_main(["--checkpoint", str(tiny_checkpoint_dir), "--output", str(out), "--quantize", "int8"])
    assert rc == 0, f"export of the tiny checkpoint failed with exit code {rc}"
    return out


def write_corpus_shards(folder: Path, split: str, shards: list[list[dict]]) -> list[Path]:
    """Write `split-NNNNN.jsonl.gz` shards (gzip JSON lines, the corpus stage's format)."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, records in enumerate(shards):
        path = folder / f"{split}-{k:05d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """Corpus shards from the sample modules: train-00000/1 (8 modules) and valid-00000 (2).

    Records carry `content` and a `quality` in [0, 1], like trainer/corpus/__init__.py's output.
    """
    out = tmp_path_factory.mktemp("corpus")
    records = [{"content": text, "quality": round(0.1 * i, 2)} for i, text in enumerate(sample_texts())]
    write_corpus_shards(out, "train", [records[0:8:2], records[1:8:2]])
    write_corpus_shards(out, "valid", [records[8:]])
    return out


@pytest.fixture(scope="session")
def tok(tiny_tokenizer_dir):
    """The tiny tokenizer as the pipeline uses it: special-token spellings in source stay text."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    t.encode_special_tokens = True
    return t


# Real code the tokenizer has not been trained on (the fixtures above train on other modules).
PROMPT_SOURCE = (STDLIB / "pprint.py").read_text(encoding="utf-8")


# Engines on the tiny model, one of each per test module (their KV prefix cache is state).


@pytest.fixture(scope="module")
def onnx_fp32(tiny_onnx_dir):
    from codeparrot_ls.engine import load_engine

    return load_engine(tiny_onnx_dir, precision="fp32", threads=1)


@pytest.fixture(scope="module")
def onnx_int8(tiny_onnx_dir):
    from codeparrot_ls.engine import load_engine

    return load_engine(tiny_onnx_dir, threads=1)


@pytest.fixture(scope="module")
def torch_engine(tiny_checkpoint_dir):
    from codeparrot_ls.engine import load_engine

    return load_engine(tiny_checkpoint_dir, threads=1)


def prompt_ids(engine, n=64, offset=0):
    return engine.tokenizer.encode(PROMPT_SOURCE).ids[offset: offset + n]


def fresh(engine):
    """A decoder on `engine` with an empty KV prefix cache: its first run is cold."""
    from codeparrot_ls.engine import Decoder

    return Decoder(engine)


# The tiny model is trained to reproduce SAMPLE (the `memorized_model_dir` fixture); the editor
# gets SAMPLE without one line, so a right suggestion exists and is known: the missing line.
SAMPLE = '''\
import os
import sys


def read_lines(path):
    with open(path) as handle:
        return handle.read().splitlines()


def main(argv):
    total = 0
    for name in argv:
        lines = read_lines(name)
        total += len(lines)
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''
MISSING_LINE = 13                               # "        total += len(lines)"
EDITED = "\n".join(line for i, line in enumerate(SAMPLE.split("\n")) if i != MISSING_LINE)


@pytest.fixture(scope="session")
def memorized_model_dir(tmp_path_factory, tiny_checkpoint_dir) -> Path:
    """The tiny checkpoint trained on SAMPLE until it reproduces it, exported to ONNX (fp32).

    A random model's greedy output is mostly dropped by the server's post-processing; this
    one has a right answer the test can expect, and the ONNX engine is the one users run.
    """
    import shutil

    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    from codeparrot_ls.prompt import END_OF_TEXT
    from trainer.export import main as export_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a tiny model: more threads only contend on a busy machine
    try:
        torch.manual_seed(0)
        model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint_dir)
        tok = Tokenizer.from_file(str(tiny_checkpoint_dir / "tokenizer.json"))
        # Framed as training frames a document (and the server a prompt): after <|endoftext|>.
        ids = torch.tensor([[tok.token_to_id(END_OF_TEXT), *tok.encode(SAMPLE).ids]])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(200):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if loss.item() < 0.02:
                break
        assert loss.item() < 0.05, f"the tiny model did not learn the sample (loss {loss.item():.3f})"
        checkpoint = tmp_path_factory.mktemp("memorized_checkpoint")
        model.eval()
        model.save_pretrained(checkpoint)
    finally:
        torch.set_num_threads(threads)
    for f in tiny_checkpoint_dir.iterdir():     # the tokenizer files
        if not (checkpoint / f.name).exists():
            shutil.copy(f, checkpoint / f.name)
    out = tmp_path_factory.mktemp("memorized_onnx")
    assert export_main(["--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    return out
