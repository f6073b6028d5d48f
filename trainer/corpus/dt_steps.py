"""The corpus stage's own datatrove pipeline steps (see trainer/corpus/dt.py for the stages).

Every step that decides a file's fate writes its counts to `COUNTS/<stage>/<rank>.json`
when its task's stream is exhausted (write-then-rename, so a killed task leaves no
half-written count and a rerun simply replaces it); the finish step sums them.
Intermediate documents are gzip jsonl files named by rank, read back in the same order
by the next stage, because datatrove's dedup filters address documents by their index
in the task's stream.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

from trainer.corpus.filters import content_hash, identifier_set, uniform_draw


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def record_of(doc: Document) -> dict:
    """The output record, with the same fields as the single-process path writes."""
    meta = doc.metadata
    record = {"content": doc.text, "path": meta["path"]}
    for key in ("repo_name", "license"):
        if meta.get(key) is not None:
            record[key] = meta[key]
    record.update(size=meta["size"], hash=meta["hash"], quality=meta["quality"])
    return record


def document_digest(doc: Document) -> bytes:
    """The exact-dedup key: the whitespace-free content hash the reader computed."""
    return bytes.fromhex(doc.metadata["hash"])


class _Counting(PipelineStep):
    """A step that writes `counts` to COUNTS/<stage>/<rank>.json at the end of its task."""

    type = "codeparrot"

    def __init__(self, counts_dir: str, stage: str):
        super().__init__()
        self.counts_dir, self.stage = counts_dir, stage

    def save_counts(self, rank: int, counts: dict) -> None:
        write_json(Path(self.counts_dir) / self.stage / f"{rank:05d}.json", counts)


class CorpusRead(_Counting):
    """Reads task `rank`'s share of the sources; applies the read checks and size bounds
    (dropped here, counted) and measures the quality filters, whose verdict travels in
    the metadata: the filters apply after exact dedup, as in the single-process path,
    so a copy of a file is counted as a duplicate whatever the first copy's fate."""

    name = "corpus read"

    def __init__(self, args, specs: list[str], counts_dir: str):
        super().__init__(counts_dir, "read")
        self.args, self.specs = args, specs

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from trainer.corpus import filter_verdict, load_tokenizer
        from trainer.corpus.sources import resolve_source

        a = self.args
        sources = [resolve_source(s, a.hf_split, a.hf_data_files) for s in self.specs]
        tokenizer = load_tokenizer(a.tokenizer) if a.tokenizer else None
        off = set(a.disable)
        seen = bytes_in = out = 0
        dropped: Counter = Counter()
        start = time.process_time()
        for source in sources:
            for item in source.items(a.max_bytes, rank, world_size):
                seen += 1
                bytes_in += item.size
                if item.reason is None and item.size < a.min_bytes:
                    item.reason = "too_small"
                if item.reason is not None:
                    dropped[item.reason] += 1
                    continue
                data = item.data if item.data is not None else item.content.encode("utf-8")
                digest = content_hash(item.content, data)
                verdict, quality = filter_verdict(a, off, tokenizer, item.content, data, digest)
                out += 1
                self.stat_update("forwarded")
                yield Document(text=item.content, id=f"{rank}/{out}", metadata={
                    "path": item.path, "repo_name": item.repo_name, "license": item.license,
                    "size": item.size, "hash": digest.hex(), "quality": quality, "verdict": verdict})
        self.save_counts(rank, {"seen": seen, "bytes_in": bytes_in, "out": out, "dropped": dropped,
                                "cpu_s": round(time.process_time() - start, 3)})


class CorpusFilter(_Counting):
    """Drops the documents whose quality-filter verdict (from CorpusRead) is a reason."""

    name = "corpus filters"

    def __init__(self, counts_dir: str):
        super().__init__(counts_dir, "filter")

    def run(self, data, rank: int = 0, world_size: int = 1):
        n_in = out = 0
        dropped: Counter = Counter()
        for doc in data:
            n_in += 1
            verdict = doc.metadata.pop("verdict", None)
            if verdict is not None:
                dropped[verdict] += 1
                self.stat_update(verdict)
                continue
            out += 1
            yield doc
        self.save_counts(rank, {"in": n_in, "out": out, "dropped": dropped})


class SpillDocs(PipelineStep):
    """Writes the stream to FOLDER/<rank>.jsonl.gz and passes it on (a task's file is
    complete or absent: written under .tmp and renamed when the stream ends)."""

    type = "codeparrot"
    name = "spill documents"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        final = Path(self.folder) / f"{rank:05d}.jsonl.gz"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        with gzip.open(tmp, "wb", compresslevel=1) as f:
            for doc in data:
                f.write(json.dumps({"text": doc.text, "id": doc.id, "metadata": doc.metadata}).encode() + b"\n")
                yield doc
        os.replace(tmp, final)


class LoadDocs(PipelineStep):
    """Reads back FOLDER/<rank>.jsonl.gz in the order SpillDocs wrote it."""

    type = "codeparrot"
    name = "load documents"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        path = Path(self.folder) / f"{rank:05d}.jsonl.gz"
        with gzip.open(path, "rb") as f:
            for line in f:
                d = json.loads(line)
                yield Document(text=d["text"], id=d["id"], metadata=d["metadata"])


class _NoWords(WordTokenizer):
    """Placeholder: CorpusMinhashSignature shingles identifiers itself (no NLP tokenizer)."""

    def word_tokenize(self, text, language=None):
        return text.split()

    def sent_tokenize(self, text, language=None):
        return [text]

    def span_tokenize(self, text, language=None):
        return [(0, len(text))]


class CorpusMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signatures over the set of identifiers and numbers of a file
    (the single-process path's shingles); files with fewer than `min_tokens` distinct
    identifiers get no signature, so they are never near duplicates (counted)."""

    def __init__(self, output_folder: str, config, min_tokens: int, counts_dir: str):
        super().__init__(output_folder, config, language=_NoWords())
        self.min_tokens, self.counts_dir = min_tokens, counts_dir
        self.skipped_small = 0

    def get_shingles(self, text: str) -> np.ndarray:
        tokens = identifier_set(text.encode("utf-8"))
        if len(tokens) < self.min_tokens:
            self.skipped_small += 1
            return np.empty((0, 1), dtype=np.uint64)
        return np.fromiter((self._hash_func(t) for t in tokens), dtype=np.uint64,
                           count=len(tokens)).reshape((-1, 1))

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.skipped_small = 0
        super().run(data, rank, world_size)
        write_json(Path(self.counts_dir) / "minhash" / f"{rank:05d}.json", {"skipped_small": self.skipped_small})


class ShuffleOut(_Counting):
    """Routes each kept record to its split (the content-hash draw of the single-process
    path) and to one of `buckets` shuffle buckets by another draw of its hash:
    SHUFFLE/<split>/<bucket>/<rank>.jsonl.gz. Each shard-writing task then shuffles one
    bucket, so every output shard mixes files from all sources and tasks."""

    name = "shuffle out"

    def __init__(self, args, shuffle_dir: str, buckets: int, counts_dir: str):
        super().__init__(counts_dir, "kept")
        self.args, self.shuffle_dir, self.buckets = args, shuffle_dir, buckets

    def run(self, data, rank: int = 0, world_size: int = 1):
        files: dict[Path, gzip.GzipFile] = {}
        kept = bytes_out = 0
        least = None  # the train record with the smallest split draw: (draw, hash, bucket)
        for doc in data:
            record = record_of(doc)
            digest = bytes.fromhex(record["hash"])
            draw = uniform_draw(0, "split", digest)
            split = "valid" if draw < self.args.valid_fraction else "train"
            bucket = int(uniform_draw(self.args.seed, "shuffle", digest) * self.buckets)
            path = Path(self.shuffle_dir) / split / f"{bucket:05d}" / f"{rank:05d}.jsonl.gz"
            if path not in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                files[path] = gzip.open(path.with_name(path.name + ".tmp"), "wb", compresslevel=1)
            files[path].write(json.dumps(record).encode("ascii") + b"\n")
            kept += 1
            bytes_out += record["size"]
            if split == "train" and (least is None or draw < least[0]):
                least = (draw, record["hash"], bucket)
            yield doc
        for path, f in files.items():
            f.close()
            os.replace(path.with_name(path.name + ".tmp"), path)
        self.save_counts(rank, {"kept": kept, "bytes_out": bytes_out, "least_train": least})


class RssProbe(PipelineStep):
    """Last step of every stage: records the task process's peak RSS."""

    type = "codeparrot"
    name = "peak rss"

    def __init__(self, counts_dir: str, stage: str):
        super().__init__()
        self.counts_dir, self.stage = counts_dir, stage

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data is not None:
            for doc in data:
                yield doc
        write_json(Path(self.counts_dir) / "rss" / self.stage / f"{rank:05d}.json",
                   {"peak_rss_mib": peak_rss_mib()})
