"""Code from the other open documents that looks like the code at the cursor.

Each document is cut into overlapping windows of lines; a window's score is the Jaccard
similarity of its identifiers and those of the lines above the cursor. Windows and an
inverted index (identifier -> windows) are computed once per document text, so a request
only touches the windows that share an identifier with its query.
"""

from __future__ import annotations

import heapq
import keyword
import operator
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

SNIPPET_WINDOW_LINES = 12
SNIPPET_STRIDE_LINES = 6
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STOP_IDENTIFIERS = frozenset(keyword.kwlist) | {"self", "cls", "None", "True", "False"}


@dataclass
class Snippet:
    uri: str
    start_line: int
    text: str
    score: float


def identifiers(text: str) -> frozenset[str]:
    return frozenset(w for w in _IDENTIFIER.findall(text) if w not in _STOP_IDENTIFIERS)


@dataclass
class IndexedDocument:
    text: str
    windows: list[tuple[int, str, frozenset[str]]]   # (first line, text, identifiers)
    postings: dict[str, list[int]]                    # identifier -> indices of the windows holding it


class SnippetIndex:
    """The windows of other open documents, indexed, cached per document text."""

    def __init__(self, max_documents: int = 32):
        self._docs: OrderedDict[str, IndexedDocument] = OrderedDict()
        self.max_documents = max_documents
        self._lock = threading.Lock()

    def document(self, uri: str, text: str) -> IndexedDocument:
        with self._lock:
            hit = self._docs.get(uri)
            if hit is not None and (hit.text is text or hit.text == text):
                self._docs.move_to_end(uri)
                return hit
        lines = text.split("\n")
        windows: list[tuple[int, str, frozenset[str]]] = []
        postings: dict[str, list[int]] = {}
        for start in range(0, max(len(lines) - SNIPPET_WINDOW_LINES, 0) + 1, SNIPPET_STRIDE_LINES):
            chunk = "\n".join(lines[start:start + SNIPPET_WINDOW_LINES]).strip("\n")
            if chunk.strip():
                ids = identifiers(chunk)
                for name in ids:
                    postings.setdefault(name, []).append(len(windows))
                windows.append((start, chunk, ids))
        doc = IndexedDocument(text, windows, postings)
        with self._lock:
            self._docs[uri] = doc
            self._docs.move_to_end(uri)
            while len(self._docs) > self.max_documents:
                self._docs.popitem(last=False)
        return doc

    def forget(self, uri: str) -> None:
        with self._lock:
            self._docs.pop(uri, None)

    def __len__(self) -> int:
        return len(self._docs)


def rank_snippets(query: frozenset[str], documents: Sequence[tuple[str, str]], index: SnippetIndex,
                  limit: int | None = None) -> list[Snippet]:
    """Windows of `documents` by Jaccard similarity of identifiers to `query`, best first
    (only windows sharing at least one identifier); the best `limit` of them when given."""
    if not query:
        return []
    scored = []   # (-score, uri, first line, document, window): sorts best first, ties stable
    for uri, text in documents:
        doc = index.document(uri, text)
        shared: Counter[int] = Counter()
        for name in query:
            hits = doc.postings.get(name)
            if hits:
                shared.update(hits)
        windows, n_query = doc.windows, len(query)
        scored.extend((-inter / (n_query + len(windows[i][2]) - inter), uri, windows[i][0], doc, i)
                      for i, inter in shared.items())
    # Snippet objects only for what is returned: five large documents share an identifier
    # with thousands of windows, and a request reads a handful.
    by_rank = operator.itemgetter(0, 1, 2)   # -score, uri, first line
    best = heapq.nsmallest(limit, scored, key=by_rank) if limit is not None else sorted(scored, key=by_rank)
    return [Snippet(uri, start, doc.windows[i][1], -neg) for neg, uri, start, doc, i in best]


def format_snippet(snippet: Snippet) -> str:
    name = snippet.uri.rstrip("/").rsplit("/", 1)[-1]
    return f"# {name}\n{snippet.text}\n"
