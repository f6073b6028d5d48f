"""Streaming packing dataset over the corpus shards, with fill-in-the-middle.

In the spirit of the seed's ConstantLengthDataset: documents are joined by the
end-of-text token, a large character buffer is tokenized at once (the fast
tokenizer's batch encode, in Rust threads), and only full `seq_length`
sequences come out, so training needs no padding and no attention mask. Tokens
left over at the end of a buffer are carried into the next one instead of being
dropped.

Several processes: the stream of document indices is dealt out round-robin to
`world_size * dataloader_workers` streams (document i goes to stream
i % num_streams), so every rank and every DataLoader worker sees different
documents and no document is seen twice in an epoch.

Fill-in-the-middle is applied per context by default (Bavarian et al. 2022, context-level
FIM): each packed window is split at its end-of-text tokens and each fragment is turned into
a FIM example with probability `fim_rate`, so every example — prefix end, suffix, sentinels
and middle — lies inside the window the model trains on, as a served prompt does. With
`fim_mode="document"` whole documents are split before packing instead, so a long file's
middle may land thousands of tokens and several windows away from its prefix.

Determinism (what exact resume relies on): a stream's output depends only on
(seed, epoch, stream index, number of streams), never on time or on torch's
global RNG. Resuming therefore replays the stream and skips the batches already
consumed, which reproduces the data position exactly.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.utils.data import IterableDataset, get_worker_info

from codeparrot_ls.prompt import (
    END_OF_TEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, QUALITY_TOKENS, fim_document_ids, quality_token)

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid")
FIM_MODES = ("context", "document")


def shard_files(corpus_dir: str | Path, split: str) -> list[Path]:
    """The `split-*.jsonl.gz` shards of a corpus folder, in name order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    files = sorted(Path(corpus_dir).glob(f"{split}-*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.jsonl.gz shards in {corpus_dir}")
    return files


@dataclass
class StreamStats:
    documents: int = 0
    bad_lines: int = 0          # not JSON or without a string `content`: skipped
    fim_documents: int = 0
    tokens: int = 0             # document tokens including separators and quality tokens
    sequences: int = 0
    dropped_tokens: int = 0     # the tail shorter than one sequence, at the end of a finite stream
    epochs: int = 0
    bad_files: list[str] = field(default_factory=list)


def read_documents(files: list[Path], stats: StreamStats) -> Iterator[dict]:
    """Every well-formed record of the shards, in order; malformed lines are counted and skipped."""
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("content"), str):
                    stats.bad_lines += 1
                    if stats.bad_lines <= 5:
                        logger.warning("%s:%d: skipping a line without a JSON `content` string", path, line_no)
                    continue
                yield record


class PackedDataset(IterableDataset):
    """Batches (`LongTensor[batch_size, seq_length]`) of packed token sequences.

    `infinite=True` cycles over the shards epoch after epoch (reshuffling the shard
    order and the sequence shuffle buffer with the epoch's seed); `infinite=False`
    makes one pass and ends with a possibly shorter last batch.
    `skip_batches` is the number of batches this rank already consumed (resume).
    """

    def __init__(self, files: list[Path], tokenizer_file: str | Path, seq_length: int, batch_size: int, *,
                 infinite: bool, seed: int = 0, fim_rate: float = 0.0, fim_spm_rate: float = 0.5,
                 fim_mode: str = "context", quality_tokens: bool = False, shuffle_buffer: int = 0, sequences_per_buffer: int = 64,
                 chars_per_token: float = 3.6, rank: int = 0, world_size: int = 1, skip_batches: int = 0):
        super().__init__()
        if not 0.0 <= fim_rate <= 1.0 or not 0.0 <= fim_spm_rate <= 1.0:
            raise ValueError("fim_rate and fim_spm_rate must be in [0, 1]")
        if fim_mode not in FIM_MODES:
            raise ValueError(f"fim_mode must be one of {FIM_MODES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.files = [Path(f) for f in files]
        self.tokenizer_file = str(tokenizer_file)
        self.seq_length, self.batch_size = seq_length, batch_size
        self.infinite, self.seed = infinite, seed
        self.fim_rate, self.fim_spm_rate, self.quality_tokens = fim_rate, fim_spm_rate, quality_tokens
        self.fim_mode = fim_mode
        self.shuffle_buffer = shuffle_buffer
        # Characters gathered before one batch-encode call (the seed's buffer size).
        self.buffer_chars = int(seq_length * chars_per_token * sequences_per_buffer)
        self.rank, self.world_size, self.skip_batches = rank, world_size, skip_batches
        self.stats = StreamStats()
        self._tokenizer: Tokenizer | None = None

    def load_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tok = Tokenizer.from_file(self.tokenizer_file)
            # Source text that spells a special token ("<|endoftext|>" in a docstring)
            # must stay plain text: special ids are only ever inserted by this module.
            tok.encode_special_tokens = True
            vocab = tok.get_vocab()
            missing = [t for t in (END_OF_TEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX) if t not in vocab]
            if missing and (self.fim_rate > 0 or END_OF_TEXT in missing):
                raise ValueError(f"tokenizer {self.tokenizer_file} lacks special tokens {missing}")
            if self.quality_tokens and not all(t in vocab for t in QUALITY_TOKENS):
                raise ValueError(f"tokenizer {self.tokenizer_file} lacks the quality tokens {QUALITY_TOKENS}")
            self.token_ids = {t: vocab[t] for t in (END_OF_TEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX) if t in vocab}
            self.vocab = vocab
            self._tokenizer = tok
        return self._tokenizer

    def __getstate__(self):  # DataLoader workers load their own tokenizer
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    # -- the stream -------------------------------------------------------------------------

    def _stream_position(self) -> tuple[int, int, int]:
        """(stream index, number of streams, batches of this stream to skip)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes its i-th batch from worker i % workers. Global batch k belongs
        # to sub-stream k % workers; after `skip_batches` batches, this worker's i-th batch
        # is global batch skip_batches + i, so it plays sub-stream (worker + skip) % workers,
        # which already produced the batches k < skip_batches with k % workers == sub.
        sub = (worker + self.skip_batches) % workers
        skip = max(0, (self.skip_batches - sub + workers - 1) // workers)
        return self.rank * workers + sub, self.world_size * workers, skip

    def pieces(self, record: dict, rng: random.Random) -> tuple[list[str], str | None]:
        """A document as its text pieces (1, or 3 for FIM) and the FIM layout (None: plain)."""
        text = record["content"]
        if self.fim_mode == "document" and self.fim_rate and rng.random() < self.fim_rate:
            a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
            layout = "spm" if rng.random() < self.fim_spm_rate else "psm"
            return [text[:a], text[a:b], text[b:]], layout
        return [text], None

    def encode_buffer(self, records: list[dict], rng: random.Random) -> list[int]:
        """Token ids of the documents, each ended by end-of-text, tokenized in one batch call."""
        tok = self.load_tokenizer()
        split = [self.pieces(r, rng) for r in records]
        flat = [p for pieces, _ in split for p in pieces]
        encoded = tok.encode_batch(flat, add_special_tokens=False) if flat else []
        ids: list[int] = []
        eos = self.token_ids[END_OF_TEXT]
        i = 0
        for record, (pieces, layout) in zip(records, split):
            if self.quality_tokens and isinstance(record.get("quality"), (int, float)):
                ids.append(self.vocab[quality_token(record["quality"])])
            if layout is None:
                ids.extend(encoded[i].ids)
            else:
                prefix, middle, suffix = (e.ids for e in encoded[i:i + 3])
                ids.extend(fim_document_ids(prefix, middle, suffix, self.token_ids, layout))
                self.stats.fim_documents += 1
            ids.append(eos)
            i += len(pieces)
        return ids

    def sequences(self, stream: int, num_streams: int) -> Iterator[list[int]]:
        """Full `seq_length` sequences of one stream, shuffled through the shuffle buffer."""
        self.load_tokenizer()
        carry: list[int] = []
        epoch = 0
        while True:
            # Shard order: the same for every stream (so the modulo deal is a partition).
            files = list(self.files)
            if self.infinite:
                random.Random(f"files-{self.seed}-{epoch}").shuffle(files)
            rng = random.Random(f"stream-{self.seed}-{epoch}-{stream}-{num_streams}")
            shuffle: list[list[int]] = []
            records: list[dict] = []
            chars = docs_this_epoch = 0
            for index, record in enumerate(read_documents(files, self.stats)):
                if index % num_streams != stream:
                    continue
                records.append(record)
                chars += len(record["content"])
                docs_this_epoch += 1
                if chars >= self.buffer_chars:
                    yield from self._cut(records, rng, carry, shuffle)
                    records, chars = [], 0
            if records:
                yield from self._cut(records, rng, carry, shuffle)
            self.stats.documents += docs_this_epoch
            self.stats.epochs += 1
            rng.shuffle(shuffle)
            yield from shuffle
            if not self.infinite:
                self.stats.dropped_tokens += len(carry)
                return
            if docs_this_epoch == 0:
                raise ValueError(f"stream {stream} of {num_streams} got no documents from {len(files)} shards: "
                                 "the corpus is too small for this many processes x workers")
            epoch += 1

    def _cut(self, records, rng, carry, shuffle) -> Iterator[list[int]]:
        ids = self.encode_buffer(records, rng)
        self.stats.tokens += len(ids)
        carry.extend(ids)
        n_full = len(carry) // self.seq_length
        windows = [carry[k * self.seq_length:(k + 1) * self.seq_length] for k in range(n_full)]
        if self.fim_mode == "context" and self.fim_rate:
            windows = [self.context_fim(w, rng) for w in windows]
        for seq in windows:
            self.stats.sequences += 1
            if self.shuffle_buffer <= 0:
                yield seq
                continue
            shuffle.append(seq)
            if len(shuffle) >= self.shuffle_buffer:
                j = rng.randrange(len(shuffle))
                shuffle[j], shuffle[-1] = shuffle[-1], shuffle[j]
                yield shuffle.pop()
        del carry[:n_full * self.seq_length]

    def context_fim(self, window: list[int], rng: random.Random) -> list[int]:
        """The window with each fragment between end-of-text tokens made a FIM example at `fim_rate`.

        A chosen fragment is decoded, cut at two random characters and its three pieces
        tokenized apart, as the server tokenizes a prefix and a suffix. The sentinels make
        the window 3 tokens longer per example: it is cut back to its length at the end.
        """
        eos = self.token_ids[END_OF_TEXT]
        fragments, start = [], 0
        for i, t in enumerate(window + [eos]):
            if t == eos:
                fragments.append(window[start:i])
                start = i + 1
        chosen = [len(f) > 1 and rng.random() < self.fim_rate for f in fragments]
        if not any(chosen):
            return window
        tok = self.load_tokenizer()
        texts = tok.decode_batch([f for f, c in zip(fragments, chosen) if c], skip_special_tokens=False)
        plans = []
        for text in texts:
            a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
            plans.append(("spm" if rng.random() < self.fim_spm_rate else "psm", [text[:a], text[a:b], text[b:]]))
        encoded = tok.encode_batch([p for _, pieces in plans for p in pieces], add_special_tokens=False)
        out: list[int] = []
        made = 0
        for fragment, is_fim in zip(fragments, chosen):
            if len(out) >= len(window):
                break
            if is_fim:
                prefix, middle, suffix = (e.ids for e in encoded[3 * made:3 * made + 3])
                out.extend(fim_document_ids(prefix, middle, suffix, self.token_ids, plans[made][0]))
                made += 1
            else:
                out.extend(fragment)
            out.append(eos)
        self.stats.fim_documents += made
        return out[:len(window)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        stream, num_streams, skip = self._stream_position()
        batch: list[list[int]] = []
        for seq in self.sequences(stream, num_streams):
            batch.append(seq)
            if len(batch) == self.batch_size:
                if skip:
                    skip -= 1
                else:
                    yield torch.tensor(batch, dtype=torch.long)
                batch = []
        if batch and not skip:
            yield torch.tensor(batch, dtype=torch.long)


def make_loader(dataset: PackedDataset, workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ready-made batches; workers tokenize off the training process.

    Its own generator keeps the DataLoader from drawing on torch's global RNG, which
    the checkpoint restores (dropout must see the same random numbers after a resume).
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, generator=torch.Generator().manual_seed(0),
        persistent_workers=False, prefetch_factor=4 if workers else None)
