"""The open documents as suggestions see them: which were used last (their snippets go into
prompts), their text made tokenizable, and the memory a closed big one gives back.

The documents themselves live in pygls' workspace (incremental sync); this keeps only what
the server adds to them.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from urllib.parse import unquote

from codeparrot_ls.positions import normalize_newlines
from codeparrot_ls.repo_context import path_to_uri

MAX_OTHER_DOCUMENTS = 8                 # other open files offered to the context builder
MAX_OTHER_CHARS = 1_000_000
BIG_DOCUMENT_CHARS = 1_000_000          # closing one gives its memory back to the system
_SURROGATE = re.compile("[\ud800-\udfff]")


class OpenDocuments:
    """Recency of use and size of the open documents, by key (the unquoted URI)."""

    def __init__(self, text_documents: Callable[[], dict]):
        self.text_documents = text_documents     # pygls' open documents (a new dict per workspace)
        self.touched: dict[str, None] = {}        # least recently used first
        self.big: set[str] = set()                # of BIG_DOCUMENT_CHARS or more

    def opened(self, key: str, text: str, completer) -> None:
        self.touch(key)
        self.index_for_snippets(key, completer)
        if len(text) >= BIG_DOCUMENT_CHARS:
            self.big.add(key)

    def closed(self, key: str) -> None:
        """Forgotten; a big document's memory goes back to the system (call it last)."""
        self.touched.pop(key, None)
        if key in self.big:
            self.big.discard(key)
            release_freed_memory()

    def touch(self, key: str) -> None:
        self.touched.pop(key, None)
        self.touched[key] = None          # insertion order = recency

    def others(self, key: str) -> list[tuple[str, str]]:
        """The most recently used other open Python documents, for snippets of related code.

        Bounded in number and size: ranking snippets costs time in every request, before the
        first token, where a cancellation cannot stop it.
        """
        self.touch(key)
        out = []
        for uri in reversed(self.touched):
            text = None if uri == key else self.snippet_source(uri)
            if text is None:
                continue
            out.append((uri, text))
            if len(out) == MAX_OTHER_DOCUMENTS:
                break
        return out

    def snippet_source(self, key: str) -> str | None:
        """An open document's text as snippets are taken from it, or None when it gives none."""
        doc = self.text_documents().get(key)
        if doc is None or not is_python(doc) or len(doc.source) > MAX_OTHER_CHARS:
            return None
        return tokenizable(normalize_newlines(doc.source))

    def open_text(self, path: str) -> str | None:
        """The buffer of the open document at `path` (the truth for it), else None."""
        doc = self.text_documents().get(unquote(path_to_uri(path)))
        return tokenizable(normalize_newlines(doc.source)) if doc is not None else None

    def index_for_snippets(self, key: str, completer) -> None:
        """Cut a newly opened document into snippet windows now, not in the first request
        that uses it (~5 ms per 100 KB, before that request's first token)."""
        text = self.snippet_source(key)
        if completer is not None and text is not None:
            completer.builder.snippet_index.document(key, text)


def tokenizable(text: str) -> str:
    """Lone surrogates (binary-ish input) cannot be tokenized; U+FFFD keeps every offset."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def is_python(doc) -> bool:
    return doc.language_id == "python" or (doc.uri or "").endswith((".py", ".pyi"))


def release_freed_memory() -> None:
    """Hand the memory freed by a closed big document back to the system. glibc keeps freed
    blocks of a few megabytes (its mmap threshold grows with every such block freed), so
    without this the server's RSS stays at its peak after the document is gone."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):   # not glibc: nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
