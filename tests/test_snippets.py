"""Snippet ranking: the inverted index scores every window exactly as a full Jaccard scan."""

from __future__ import annotations

from conftest import STDLIB

from codeparrot_ls.snippets import SnippetIndex, identifiers, rank_snippets


def test_ranking_equals_a_full_jaccard_scan_over_every_window():
    docs = [(f"file:///{name}", (STDLIB / name).read_text(encoding="utf-8")) for name in ("shlex.py", "textwrap.py")]
    index = SnippetIndex()
    query = identifiers("def split(s, comments=False, posix=True):\n    lex = shlex(s, posix=posix)\n")
    ranked = rank_snippets(query, docs, index)
    expected = []
    for uri, text in docs:
        for start, chunk, ids in index.document(uri, text).windows:
            if query & ids:
                expected.append((uri, start, len(query & ids) / len(query | ids)))
    expected.sort(key=lambda e: (-e[2], e[0], e[1]))
    assert [(s.uri, s.start_line) for s in ranked] == [(u, st) for u, st, _ in expected]
    assert all(abs(s.score - e[2]) < 1e-12 for s, e in zip(ranked, expected))
    assert ranked[0].uri == "file:///shlex.py"
    best = rank_snippets(query, docs, index, limit=10)
    assert [(s.uri, s.start_line, s.score) for s in best] == [(s.uri, s.start_line, s.score) for s in ranked[:10]]


def test_the_index_is_kept_per_text_and_bounded():
    index = SnippetIndex(max_documents=2)
    first = index.document("file:///a.py", "import os\nos.getcwd()\n")
    assert index.document("file:///a.py", "import os\nos.getcwd()\n") is first
    assert index.document("file:///a.py", "import sys\n") is not first     # edited: indexed again
    index.document("file:///b.py", "x = 1\n")
    index.document("file:///c.py", "y = 2\n")
    assert len(index) == 2
    assert rank_snippets(frozenset(), [("file:///b.py", "x = 1\n")], index) == []
