"""The suggestion cache: typing along a shown suggestion is answered from it."""

from __future__ import annotations

from pathlib import Path

from codeparrot_ls.cache import CachedSuggestion, SuggestionCache

DOC = (Path(__file__).parent / "data" / "settings_module.py").read_text(encoding="utf-8")
URI = "file:///project/settings.py"
# A cursor at the start of the (real) blank-ish line after `def validate(self) -> None:`.
OFF = DOC.index("    def validate(self) -> None:\n") + len("    def validate(self) -> None:\n")
S = CachedSuggestion("        if self.max_new_tokens < 1:", "stop")


def typed(x: str) -> tuple[str, int]:
    """The document after typing `x` at OFF, and the new cursor."""
    return DOC[:OFF] + x + DOC[OFF:], OFF + len(x)


def test_typing_along_answers_the_rest():
    c = SuggestionCache()
    c.store(URI, DOC, OFF, [S])
    for n in (0, 1, 8, 11, len(S.text) - 1):
        text, off = typed(S.text[:n])
        hit = c.lookup(URI, text, off)
        assert hit == [CachedSuggestion(S.text[n:], "stop")], n
    assert c.hits == 5


def test_misses():
    c = SuggestionCache()
    c.store(URI, DOC, OFF, [S], settings_key=("a",))
    text, off = typed("        if x")                      # diverges from the suggestion
    assert c.lookup(URI, text, off, ("a",)) is None
    text, off = typed(S.text)                              # all of it typed: nothing left
    assert c.lookup(URI, text, off, ("a",)) is None
    text, off = typed("    ")
    assert c.lookup("file:///other.py", text, off, ("a",)) is None   # another document
    assert c.lookup(URI, text, off, ("b",)) is None                   # other settings
    # An edit after the cursor (the suffix) or just before the typed text invalidates it.
    changed_suffix = text[:off] + text[off:].replace("maxNewTokens", "maxTokens", 1)
    assert c.lookup(URI, changed_suffix, off, ("a",)) is None
    changed_prefix = text.replace("def validate", "def check", 1)
    assert c.lookup(URI, changed_prefix, off - 2, ("a",)) is None
    assert c.lookup(URI, text, off, ("a",)) is not None


def test_several_candidates_keep_only_those_still_matching():
    c = SuggestionCache()
    cands = [CachedSuggestion("        if self.enabled:", "stop"), CachedSuggestion("        return None", "eos"),
             CachedSuggestion("        if not self.enabled:", "stop")]
    c.store(URI, DOC, OFF, cands, invoked=True)
    text, off = typed("        if ")
    assert [h.text for h in c.lookup(URI, text, off, invoked=True)] == ["self.enabled:", "not self.enabled:"]
    # An automatic request may use an invoked entry; an invocation needs one made by one.
    c2 = SuggestionCache()
    c2.store(URI, DOC, OFF, [S])
    assert c2.lookup(URI, DOC, OFF, invoked=True) is None
    assert c2.lookup(URI, DOC, OFF, invoked=False) is not None


def test_lru_keeps_the_most_recent_entries():
    c = SuggestionCache(max_entries=100)
    lines = list(range(0, 1500, 10))  # 150 cursor offsets
    for i in lines:
        c.store(URI, DOC, i, [CachedSuggestion("  # note", "stop")])
    assert len(c) == 100
    assert c.lookup(URI, DOC, lines[0]) is None
    assert c.lookup(URI, DOC, lines[-1]) is not None
    # Storing again at the same place replaces the entry instead of adding one.
    c.store(URI, DOC, lines[-1], [CachedSuggestion("  # other", "stop")])
    assert len(c) == 100 and c.lookup(URI, DOC, lines[-1])[0].text == "  # other"


def test_empty_suggestions_are_not_stored_and_invalidate_drops_a_document():
    c = SuggestionCache()
    c.store(URI, DOC, OFF, [CachedSuggestion("", "eos")])
    assert len(c) == 0
    c.store(URI, DOC, OFF, [S])
    c.store("file:///b.py", DOC, OFF, [S])
    c.invalidate(URI)
    assert c.lookup(URI, DOC, OFF) is None and c.lookup("file:///b.py", DOC, OFF) is not None
