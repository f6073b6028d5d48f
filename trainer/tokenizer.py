"""`codeparrot tokenizer`: train a byte-level BPE tokenizer for Python code.

    codeparrot tokenizer --corpus DIR --vocab-size 32768 --output TOKDIR [--max-files N] [--variant code]

Reads the corpus stage's shards (DIR/train-*.jsonl.gz, records with a `content` field)
as a stream, or any folder of .py files, and writes TOKDIR with `tokenizer.json` (loads
with `tokenizers.Tokenizer.from_file`), the files `transformers.AutoTokenizer` needs, and
`report.json` (chars per token on DIR/valid-*.jsonl.gz, keywords as single tokens,
fertility, the longest tokens, training files/bytes/time).

Pre-tokenization decides which pieces BPE may merge into one token. GPT-2's regex was
made for English: it splits `max_length` into `max`, `_`, `length`, `'store'` into `'s`
+ `tore` (the contraction rule) and ends every line with a separate newline token when a
`:` or `)` comes before it. The `code` variant keeps identifiers with underscores whole,
glues the newline and the next line's indentation (and the punctuation that ends the
line) into one piece, and lets one punctuation character lead an identifier (`.append`,
`(self`). bench/bench_tokenizer.py measures every variant against GPT-2's on held-out code.
"""

from __future__ import annotations

import gzip
import itertools
import json
import keyword
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from codeparrot_ls.prompt import END_OF_TEXT, SPECIAL_TOKENS

# Pieces of the pre-tokenization regexes (Oniguruma syntax, as `tokenizers` uses).
PUNCT = r"[^\s\p{L}\p{N}_]"          # one character that is not a letter, digit, `_` or space
IDENT = r"[\p{L}\p{N}_]+"            # an identifier, keyword or number
NEWLINE_INDENT = r"(?:\r?\n[ \t]*)+"  # line breaks (blank lines too) and the next indentation
SPACES = r"\s+(?!\S)|\s+"            # other whitespace; a run before a word leaves it one space

# name -> (regex or None for GPT-2's own, what it changes)
VARIANTS: dict[str, tuple[str | None, str]] = {
    "gpt2": (None, "GPT-2's byte-level regex (the baseline)"),
    "lines": ("|".join([NEWLINE_INDENT, " ?" + IDENT, " ?" + PUNCT + "+", SPACES]),
              "identifiers keep `_`; newline + next line's indentation is one piece; no contractions"),
    "lines-punct": ("|".join([PUNCT + "*" + NEWLINE_INDENT, " ?" + IDENT, " ?" + PUNCT + "+", SPACES]),
                    "`lines` + the punctuation that ends a line joins the newline piece (`):\\n    `)"),
    "code": ("|".join([PUNCT + "*" + NEWLINE_INDENT, f"(?: |{PUNCT})?{IDENT}", " ?" + PUNCT + "+", SPACES]),
             "`lines-punct` + one punctuation character may lead an identifier (`.append`, `(self`)"),
    "code-greedy": ("|".join([PUNCT + "*" + NEWLINE_INDENT, f" ?{PUNCT}*{IDENT}", " ?" + PUNCT + "+", SPACES]),
                    "`code` with any run of punctuation leading an identifier (`().append`)"),
    "code-digits": ("|".join([PUNCT + "*" + NEWLINE_INDENT, rf"(?: |{PUNCT})?[\p{{L}}_][\p{{L}}\p{{N}}_]*",
                              r"\p{N}{1,3}", " ?" + PUNCT + "+", SPACES]),
                    "`code` with numbers split into groups of at most 3 digits"),
}
DEFAULT_VARIANT = "code"


def build_pretokenizer(variant: str = DEFAULT_VARIANT):
    """The pre-tokenizer of a variant: a regex split, then GPT-2's byte-to-unicode mapping.

    The byte mapping (ByteLevel without its own regex) gives the 256-byte base alphabet, and
    `decoders.ByteLevel` inverts it, so every variant decodes any text exactly.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown pre-tokenization variant {variant!r}; expected one of {sorted(VARIANTS)}")
    regex = VARIANTS[variant][0]
    if regex is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def train_tokenizer(texts: Iterable[str], vocab_size: int = 32768, variant: str = DEFAULT_VARIANT,
                    min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE trained on `texts` (any iterable: it is streamed); the special tokens
    get the first ids, in `SPECIAL_TOKENS` order, so END_OF_TEXT is id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = build_pretokenizer(variant)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, output_dir: str | Path, model_max_length: int = 2048) -> Path:
    """Write a folder that both `tokenizers` and `transformers.AutoTokenizer` load."""
    from transformers import PreTrainedTokenizerFast

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != END_OF_TEXT],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # code: " ." must stay " ."
    )
    fast.save_pretrained(out)
    return out


# ---------------------------------------------------------------- reading the corpus

class CorpusError(Exception):
    """The corpus cannot be used (missing, or with nothing to train on)."""


@dataclass
class ReadStats:
    files: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def corpus_shards(corpus: str | Path, split: str = "train") -> list[Path]:
    """The corpus stage's shards of one split (`split-*.jsonl.gz`, or uncompressed `.jsonl`)."""
    root = Path(corpus)
    return sorted([*root.glob(f"{split}-*.jsonl.gz"), *root.glob(f"{split}-*.jsonl")])


def python_files(folder: str | Path) -> list[Path]:
    """Every .py file under `folder`, in a stable order (symlinked folders are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return found


def iter_shard_texts(shards: Iterable[Path], stats: ReadStats, limit: int | None = None) -> Iterator[str]:
    """The `content` of each record, one shard line at a time; bad lines are counted, not fatal."""
    for shard in shards:
        opener = gzip.open if shard.suffix == ".gz" else open
        try:
            with opener(shard, "rt", encoding="utf-8") as lines:
                for line in lines:
                    if limit is not None and stats.files >= limit:
                        return
                    if not line.strip():
                        continue
                    try:
                        content = json.loads(line).get("content")
                    except (json.JSONDecodeError, AttributeError):
                        stats.skip("bad_json")
                        continue
                    if not isinstance(content, str) or not content:
                        stats.skip("no_content")
                        continue
                    stats.files += 1
                    stats.bytes += len(content.encode("utf-8"))
                    yield content
        except (OSError, EOFError, UnicodeDecodeError):  # truncated gzip, unreadable shard
            stats.skip("bad_shard")


def iter_python_texts(files: Iterable[Path], stats: ReadStats, limit: int | None = None) -> Iterator[str]:
    for path in files:
        if limit is not None and stats.files >= limit:
            return
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            stats.skip("not_utf8")
            continue
        except OSError:
            stats.skip("unreadable")
            continue
        if not content:
            stats.skip("no_content")
            continue
        stats.files += 1
        stats.bytes += len(content.encode("utf-8"))
        yield content


def corpus_texts(corpus: str | Path, stats: ReadStats, split: str = "train",
                 limit: int | None = None) -> Iterator[str]:
    """Stream a corpus: its `split` shards, or, when it has no shards, its .py files.

    Raises CorpusError before yielding anything when there is nothing to read.
    """
    root = Path(corpus)
    if not root.is_dir():
        raise CorpusError(f"corpus folder {str(corpus)!r} does not exist")
    shards = corpus_shards(root, split)
    if shards:
        texts = iter_shard_texts(shards, stats, limit)
    elif split == "train" and (files := python_files(root)):
        texts = iter_python_texts(files, stats, limit)
    else:
        raise CorpusError(f"corpus folder {str(corpus)!r} has no {split}-*.jsonl.gz shards and no .py files")
    first = next(texts, None)  # fail now, not after an empty training run
    if first is None:
        raise CorpusError(f"corpus {str(corpus)!r} has no usable records (skipped: {stats.skipped or 'none'})")
    yield first
    yield from texts


# ---------------------------------------------------------------- measuring a tokenizer

def python_keywords() -> list[str]:
    return sorted(set(keyword.kwlist) | set(getattr(keyword, "softkwlist", [])))


def keyword_report(tok: Tokenizer) -> dict:
    """Each Python keyword: is it one token alone and after a space?"""
    table = {kw: {"bare": len(tok.encode(kw).ids) == 1, "after_space": len(tok.encode(" " + kw).ids) == 1}
             for kw in python_keywords()}
    not_single = [kw for kw, row in table.items() if not row["bare"]]
    not_single += [" " + kw for kw, row in table.items() if not row["after_space"]]
    return {"all_single": not not_single, "not_single": not_single, "table": table}


def measure(tok: Tokenizer, texts: Iterable[str], batch_size: int = 256) -> dict:
    """Chars per token and tokens per whitespace-separated word over `texts`."""
    chars = tokens = words = files = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal tokens
        tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    for text in texts:
        files += 1
        chars += len(text)
        words += len(text.split())
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return {
        "files": files, "chars": chars, "tokens": tokens,
        "chars_per_token": chars / tokens if tokens else None,
        "fertility": tokens / words if words else None,  # tokens per whitespace-separated word
    }


def longest_tokens(tok: Tokenizer, n: int = 20) -> list[str]:
    special = set(SPECIAL_TOKENS)
    decoded = [tok.decode([i]) for i in range(tok.get_vocab_size()) if tok.id_to_token(i) not in special]
    return sorted(decoded, key=len, reverse=True)[:n]


def tokenizer_report(tok: Tokenizer, variant: str, eval_texts: Iterable[str] | None, eval_source: str) -> dict:
    evaluation = measure(tok, eval_texts) if eval_texts is not None else None
    return {
        "variant": variant,
        "variant_description": VARIANTS[variant][1],
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        "eval_source": eval_source,
        "chars_per_token": evaluation["chars_per_token"] if evaluation else None,
        "fertility": evaluation["fertility"] if evaluation else None,
        "eval": evaluation,
        "keywords": keyword_report(tok),
        "longest_tokens": longest_tokens(tok),
    }


# ---------------------------------------------------------------- command line

@dataclass
class TokenizerArguments:
    corpus: str = field(metadata={"help": "corpus folder: train-*.jsonl.gz shards (from `codeparrot corpus`) "
                                          "or a folder of .py files"})
    output: str = field(metadata={"help": "folder to write the tokenizer and report.json to"})
    vocab_size: int = field(default=32768, metadata={"help": "vocabulary size, special tokens included"})
    variant: str = field(default=DEFAULT_VARIANT, metadata={"help": "pre-tokenization variant",
                                                            "choices": sorted(VARIANTS)})
    max_files: int | None = field(default=None, metadata={"help": "train on at most this many files"})
    min_frequency: int = field(default=2, metadata={"help": "a merge must occur at least this often"})
    model_max_length: int = field(default=2048, metadata={"help": "recorded in the transformers config"})


def run(args: TokenizerArguments) -> dict:
    """Train, save and report; returns the report (also written to OUTPUT/report.json)."""
    stats = ReadStats()
    texts = corpus_texts(args.corpus, stats, "train", args.max_files)
    first = next(texts)  # raises CorpusError before any training starts
    start = time.perf_counter()
    tok = train_tokenizer(itertools.chain([first], texts), args.vocab_size, args.variant, args.min_frequency)
    seconds = time.perf_counter() - start
    out = save_tokenizer(tok, args.output, args.model_max_length)

    valid = corpus_shards(args.corpus, "valid")
    if valid:
        valid_stats = ReadStats()
        report = tokenizer_report(tok, args.variant, iter_shard_texts(valid, valid_stats), "valid split")
        report["eval"]["skipped"] = valid_stats.skipped
    else:
        report = tokenizer_report(tok, args.variant, None, "none: the corpus has no valid-*.jsonl.gz shards")
    report["training"] = {"corpus": str(args.corpus), "files": stats.files, "bytes": stats.bytes,
                          "skipped": stats.skipped, "seconds": round(seconds, 3),
                          "min_frequency": args.min_frequency, "max_files": args.max_files}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def summary(report: dict, output: str) -> str:
    tr, kw = report["training"], report["keywords"]
    cpt = report["chars_per_token"]
    lines = [
        f"tokenizer ({report['variant']}, vocab {report['vocab_size']}) saved to {output}",
        f"  trained on {tr['files']} files, {tr['bytes'] / 1e6:.1f} MB in {tr['seconds']:.1f} s"
        + (f" (skipped: {tr['skipped']})" if tr["skipped"] else ""),
        f"  {report['eval_source']}: " + (f"{cpt:.3f} chars/token, {report['fertility']:.3f} tokens/word"
                                         if cpt else "no chars/token measured"),
        "  keywords: " + ("every keyword is one token" if kw["all_single"]
                          else f"not one token: {', '.join(repr(k) for k in kw['not_single'])}"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TokenizerArguments)
    parser.prog = "codeparrot tokenizer"
    (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if args.vocab_size <= 256 + len(SPECIAL_TOKENS):
        parser.error(f"--vocab-size must exceed {256 + len(SPECIAL_TOKENS)} (256 bytes + the special tokens)")
    try:
        report = run(args)
    except CorpusError as err:
        print(f"codeparrot tokenizer: error: {err}", file=sys.stderr)
        return 2
    print(summary(report, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
