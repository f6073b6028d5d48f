"""The packing dataset: full sequences only, exact content, rank/worker partition, FIM, resume skip."""

from __future__ import annotations

import gzip
import itertools
import random

import pytest
from conftest import sample_texts, write_corpus_shards

from codeparrot_ls.prompt import END_OF_TEXT, FIM_PREFIX, FIM_SUFFIX, quality_token, split_fim_document
from trainer.pretraining.data import PackedDataset, make_loader, shard_files

SEQ = 64


@pytest.fixture(scope="module")
def docs():
    # Pieces of real modules: many documents of varied length, a few shorter than a sequence.
    texts = sample_texts()
    rng = random.Random(1)
    out = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        for start in range(0, min(len(lines), 120), 30):
            out.append("".join(lines[start:start + rng.randint(1, 30)]))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, docs):
    folder = tmp_path_factory.mktemp("packing")
    records = [{"content": d, "quality": (i % 10) / 10} for i, d in enumerate(docs)]
    write_corpus_shards(folder, "train", [records[:len(records) // 2], records[len(records) // 2:]])
    return folder


def dataset(corpus, tiny_tokenizer_dir, **kw):
    kw = {"seq_length": SEQ, "batch_size": 4, "infinite": False, **kw}
    return PackedDataset(shard_files(corpus, "train"), tiny_tokenizer_dir / "tokenizer.json", **kw)


def sequences(ds, workers=0):
    return [row for batch in make_loader(ds, workers) for row in batch.tolist()]


def doc_tokens(tok, docs):
    eos = tok.token_to_id(END_OF_TEXT)
    return [t for d in docs for t in tok.encode(d, add_special_tokens=False).ids + [eos]]


def test_packing_is_exact_and_loses_less_than_one_sequence(corpus, tiny_tokenizer_dir, tok, docs):
    ds = dataset(corpus, tiny_tokenizer_dir, sequences_per_buffer=2)
    seqs = sequences(ds)
    assert all(len(s) == SEQ for s in seqs)
    expected = doc_tokens(tok, docs)
    flat = [t for s in seqs for t in s]
    # The buffer boundaries are invisible: the stream is the documents' tokens, in order.
    assert flat == expected[:len(flat)]
    assert len(expected) - len(flat) < SEQ == ds.seq_length
    assert ds.stats.dropped_tokens == len(expected) - len(flat)
    assert ds.stats.documents == len(docs) and ds.stats.bad_lines == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_partition_the_documents(corpus, tiny_tokenizer_dir, tok, docs, workers):
    world = 2
    streams = world * max(workers, 1)
    per_rank = [sequences(dataset(corpus, tiny_tokenizer_dir, rank=r, world_size=world), workers)
                for r in range(world)]
    for rank, seqs in enumerate(per_rank):
        # Each stream k gets documents k, k + streams, ...; the rank's loader interleaves its streams.
        expected_streams = []
        for w in range(max(workers, 1)):
            k = rank * max(workers, 1) + w
            toks = doc_tokens(tok, docs[k::streams])
            expected_streams.append([toks[i:i + SEQ] for i in range(0, len(toks) - SEQ + 1, SEQ)])
        assert sorted(map(tuple, seqs)) == sorted(map(tuple, itertools.chain(*expected_streams)))
    assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1]))


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_resumes_the_stream_exactly(corpus, tiny_tokenizer_dir, workers):
    # 60 batches span more than one epoch of this corpus, so the skip crosses an epoch boundary.
    kw = dict(infinite=True, shuffle_buffer=16, seed=3, fim_rate=0.5)
    full = list(itertools.islice(make_loader(dataset(corpus, tiny_tokenizer_dir, **kw), workers), 60))
    resumed = list(itertools.islice(make_loader(dataset(corpus, tiny_tokenizer_dir, skip_batches=5, **kw),
                                                workers), 55))
    assert [b.tolist() for b in resumed] == [b.tolist() for b in full[5:]]


def test_infinite_stream_cycles_and_shuffles_per_epoch(corpus, tiny_tokenizer_dir):
    ds = dataset(corpus, tiny_tokenizer_dir, infinite=True, shuffle_buffer=8)
    one_epoch = len(sequences(dataset(corpus, tiny_tokenizer_dir))) // 4
    batches = [b.tolist() for b in itertools.islice(iter(ds), 3 * one_epoch)]
    assert ds.stats.epochs >= 2 and all(len(b) == 4 and len(b[0]) == SEQ for b in batches)
    assert batches[:one_epoch] != batches[one_epoch:2 * one_epoch]


def test_fim_documents_are_well_formed_and_round_trip(corpus, tiny_tokenizer_dir, tok, docs):
    ds = dataset(corpus, tiny_tokenizer_dir, fim_rate=1.0, fim_spm_rate=0.5, seed=7, fim_mode="document")
    flat = [t for s in sequences(ds) for t in s]
    eos = tok.token_to_id(END_OF_TEXT)
    pieces, current = [], []
    for t in flat:
        if t == eos:
            pieces.append(current)
            current = []
        else:
            current.append(t)
    assert len(pieces) >= len(docs) - 2
    layouts = set()
    for ids, original in zip(pieces, docs):
        text = tok.decode(ids, skip_special_tokens=False)
        assert text.startswith(FIM_PREFIX)
        prefix, middle, suffix = split_fim_document(text)
        assert prefix + middle + suffix == original
        layouts.add("spm" if prefix == "" and text.startswith(FIM_PREFIX + "<fim_suffix>") else "psm")
    assert layouts == {"psm", "spm"}
    assert ds.stats.fim_documents == len(docs)


def split_at(ids, eos):
    out, current = [], []
    for t in ids:
        if t == eos:
            out.append(current)
            current = []
        else:
            current.append(t)
    return out + [current]


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_context_fim_examples_fit_their_window_and_round_trip(corpus, tiny_tokenizer_dir, tok, rate):
    plain = sequences(dataset(corpus, tiny_tokenizer_dir))
    ds = dataset(corpus, tiny_tokenizer_dir, fim_rate=rate, seed=5)
    fim = sequences(ds)
    eos = tok.token_to_id(END_OF_TEXT)
    assert len(fim) == len(plain) and all(len(w) == SEQ for w in fim)
    made = complete = layouts = 0
    seen = set()
    for window, original in zip(fim, plain):
        pieces, sources = split_at(window, eos), split_at(original, eos)
        # The last piece may be cut where the window ends (3 sentinels per example make it longer).
        for piece, source in zip(pieces[:-1], sources):
            text = tok.decode(piece, skip_special_tokens=False)
            if not text.startswith(FIM_PREFIX):
                assert piece == source
                continue
            prefix, middle, suffix = split_fim_document(text)  # all three sentinels are inside
            assert prefix + middle + suffix == tok.decode(source, skip_special_tokens=False)
            seen.add("spm" if text.startswith(FIM_PREFIX + FIM_SUFFIX) else "psm")
            complete += 1
        made += sum(tok.decode(p, skip_special_tokens=False).startswith(FIM_PREFIX) for p in pieces)
    assert made == ds.stats.fim_documents and complete > 5
    assert seen == {"psm", "spm"}
    fragments = sum(len([f for f in split_at(w, eos) if len(f) > 1]) for w in plain)
    assert made / fragments == pytest.approx(rate, abs=0.15)


def test_context_fim_is_the_default_and_document_fim_stays_available(corpus, tiny_tokenizer_dir, tok, docs):
    eos = tok.token_to_id(END_OF_TEXT)
    context = sequences(dataset(corpus, tiny_tokenizer_dir, fim_rate=1.0, seed=2))
    document = sequences(dataset(corpus, tiny_tokenizer_dir, fim_rate=1.0, seed=2, fim_mode="document"))
    # Context-level: a FIM example starts every window; document-level: only where a document starts.
    assert all(w[0] == tok.token_to_id(FIM_PREFIX) for w in context if len(split_at(w, eos)[0]) > 1)
    assert sum(w[0] == tok.token_to_id(FIM_PREFIX) for w in document) < len(document) / 2
    with pytest.raises(ValueError, match="fim_mode"):
        dataset(corpus, tiny_tokenizer_dir, fim_mode="sometimes")


def test_fim_rate_is_honoured(corpus, tiny_tokenizer_dir, docs):
    ds = dataset(corpus, tiny_tokenizer_dir, fim_rate=0.5, seed=1, fim_mode="document")
    sequences(ds)
    assert 0.3 < ds.stats.fim_documents / len(docs) < 0.7
    off = dataset(corpus, tiny_tokenizer_dir, fim_rate=0.0)
    sequences(off)
    assert off.stats.fim_documents == 0


def test_quality_token_starts_each_document(corpus, tiny_tokenizer_dir, tok, docs):
    ds = dataset(corpus, tiny_tokenizer_dir, quality_tokens=True)
    flat = [t for s in sequences(ds) for t in s]
    eos = tok.token_to_id(END_OF_TEXT)
    starts = [flat[0]] + [flat[i + 1] for i, t in enumerate(flat[:-1]) if t == eos]
    expected = [tok.token_to_id(quality_token((i % 10) / 10)) for i in range(len(docs))]
    assert starts == expected[:len(starts)] and len(starts) >= len(docs) - 1


def test_source_spelling_a_special_token_stays_text(tmp_path, tiny_tokenizer_dir, tok):
    text = 'SEP = "<|endoftext|>"\nx = 1\n' * 20
    write_corpus_shards(tmp_path, "train", [[{"content": text}]])
    seqs = sequences(PackedDataset(shard_files(tmp_path, "train"), tiny_tokenizer_dir / "tokenizer.json",
                                   seq_length=16, batch_size=1, infinite=False))
    eos = tok.token_to_id(END_OF_TEXT)
    assert seqs and all(eos not in s for s in seqs)


def test_bad_lines_are_counted_and_skipped(tmp_path, tiny_tokenizer_dir):
    write_corpus_shards(tmp_path, "train", [[{"content": "x = 1\n" * 100}, {"text": "no content"}]])
    with gzip.open(tmp_path / "train-00001.jsonl.gz", "wt") as fh:
        fh.write("{not json\n" + '{"content": "y = 2\\n"}\n')
    ds = PackedDataset(shard_files(tmp_path, "train"), tiny_tokenizer_dir / "tokenizer.json",
                       seq_length=8, batch_size=2, infinite=False)
    assert sequences(ds)
    assert ds.stats.bad_lines == 2 and ds.stats.documents == 2


def test_missing_shards_and_bad_rates_are_clear_errors(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="train-"):
        shard_files(tmp_path, "train")
    with pytest.raises(ValueError, match="fim_rate"):
        PackedDataset([], tiny_tokenizer_dir / "tokenizer.json", 8, 1, infinite=False, fim_rate=1.5)


def test_too_few_documents_for_the_streams_is_a_clear_error(tmp_path, tiny_tokenizer_dir):
    write_corpus_shards(tmp_path, "train", [[{"content": "x = 1\n" * 50}]])
    ds = PackedDataset(shard_files(tmp_path, "train"), tiny_tokenizer_dir / "tokenizer.json", 8, 1,
                       infinite=True, rank=1, world_size=2)
    with pytest.raises(ValueError, match="too small"):
        next(iter(ds))
