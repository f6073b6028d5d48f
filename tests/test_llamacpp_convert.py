"""bench/llamacpp_convert.py: a checkpoint of ours through llama.cpp's own converter.

Needs llama.cpp's converter source (LLAMA_CPP_SRC, or the cache the benchmark fills); skipped
without it. The llama.cpp check also needs the optional `bench` extra (llama-cpp-python).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from llamacpp_convert import ConvertError, convert, converter_source  # noqa: E402


@pytest.fixture(scope="module")
def converter() -> Path:
    try:
        return converter_source(download=False)
    except ConvertError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def f16_gguf(converter, tiny_checkpoint_dir, tmp_path_factory) -> Path:
    return convert(tiny_checkpoint_dir, tmp_path_factory.mktemp("gguf") / "model-f16.gguf", "f16", converter)


def read_gguf(converter: Path, path: Path) -> dict:
    sys.path.insert(0, str(converter / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.remove(str(converter / "gguf-py"))
    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_has_our_sizes_and_token_ids(converter, f16_gguf, tiny_checkpoint_dir):
    import json

    from tokenizers import Tokenizer

    config = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    fields = read_gguf(converter, f16_gguf)
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.context_length"] == config["n_positions"]      # n_ctx supplied from n_positions
    assert fields["gpt2.block_count"] == config["n_layer"]
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"]
    vocab = Tokenizer.from_file(str(tiny_checkpoint_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)
    assert all(tokens[i] == piece for piece, i in vocab.items())       # id i is our token i


def test_bad_outtype_and_non_gpt2_folder_are_refused(converter, tiny_checkpoint_dir, tmp_path):
    with pytest.raises(ConvertError, match="outtype"):
        convert(tiny_checkpoint_dir, tmp_path / "x.gguf", "q4_0", converter)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConvertError, match="only GPT-2"):
        convert(tmp_path / "ckpt", tmp_path / "x.gguf", "f16", converter)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python (bench extra) not installed")
def test_llamacpp_f16_logits_match_our_fp32(f16_gguf, tiny_onnx_dir, onnx_fp32):
    from llamacpp_engine import LlamaCppEngine

    from codeparrot_ls.engine import Decoder, GenerationRequest

    theirs = LlamaCppEngine(f16_gguf, tiny_onnx_dir, threads=1)
    ids = onnx_fp32.tokenizer.encode("def parse(text):\n    return [line.split() for line in").ids
    ours_logits, _ = onnx_fp32.forward(np.array([ids]), None, len(ids))
    their_logits, past = theirs.forward(np.array([ids]), None, len(ids))
    assert past == len(ids)
    scale = np.abs(ours_logits).max()
    assert np.abs(ours_logits - their_logits).max() < 0.02 * scale     # f16 weights, every position
    # The shared decode loop runs on it: KV prefix reuse, drafts checked several tokens per pass.
    request = GenerationRequest(ids, max_new_tokens=12, lookup_tokens=4)
    decoder = Decoder(theirs)
    first = decoder.generate(request)[0]
    again = decoder.generate(request)[0]
    assert again.reused_tokens == len(ids) - 1 and again.token_ids == first.token_ids
    theirs.close()
