"""Suggestions kept while the user types along them.

After suggestion S was shown with the text P before the cursor, a request whose text
before the cursor is P + x, where S starts with x, is answered with S[len(x):] - without
running the model. Entries are keyed by the document's uri and the text around the
cursor: the last `ANCHOR_CHARS` characters of P and the first `ANCHOR_CHARS` of the text
after the cursor (with the lengths of both), so an edit elsewhere near the cursor or in
the suffix invalidates them. An LRU of `max_entries` entries (Tabby keeps 100).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

ANCHOR_CHARS = 2048


@dataclass(frozen=True)
class CachedSuggestion:
    text: str
    finish_reason: str


@dataclass
class _Entry:
    uri: str
    prefix_len: int
    prefix_anchor: str         # the last ANCHOR_CHARS characters before the cursor
    suffix_len: int
    suffix_anchor: str         # the first ANCHOR_CHARS characters after the cursor
    settings_key: tuple
    invoked: bool
    suggestions: tuple[CachedSuggestion, ...]


class SuggestionCache:
    def __init__(self, max_entries: int = 100):
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_id = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, uri: str, text: str, offset: int, suggestions, settings_key: tuple = (),
              invoked: bool = False) -> None:
        """Remember `suggestions` (CachedSuggestion) shown at `offset` in `text`."""
        suggestions = tuple(s for s in suggestions if s.text)
        if not suggestions:
            return
        entry = _Entry(uri, offset, text[max(0, offset - ANCHOR_CHARS):offset],
                       len(text) - offset, text[offset:offset + ANCHOR_CHARS],
                       settings_key, invoked, suggestions)
        with self._lock:
            # A newer suggestion at the same place replaces the older one.
            for key, old in list(self._entries.items()):
                if (old.uri == uri and old.prefix_len == offset and old.settings_key == settings_key
                        and old.prefix_anchor == entry.prefix_anchor and old.suffix_anchor == entry.suffix_anchor):
                    del self._entries[key]
            self._entries[self._next_id] = entry
            self._next_id += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def lookup(self, uri: str, text: str, offset: int, settings_key: tuple = (),
               invoked: bool = False) -> list[CachedSuggestion] | None:
        """The rest of the suggestions the user is typing along, or None (a miss).

        An explicit invocation is only answered by an entry made by one (it asks for
        several candidates; an automatic entry has one).
        """
        suffix_len = len(text) - offset
        with self._lock:
            for key in reversed(self._entries):  # most recent first
                e = self._entries[key]
                if (e.uri != uri or e.suffix_len != suffix_len or e.prefix_len > offset
                        or e.settings_key != settings_key or (invoked and not e.invoked)):
                    continue
                typed = text[e.prefix_len:offset]
                if offset - e.prefix_len > max(len(s.text) for s in e.suggestions):
                    continue
                if not text.startswith(e.suffix_anchor, offset):
                    continue
                if not text.startswith(e.prefix_anchor, e.prefix_len - len(e.prefix_anchor)):
                    continue
                rest = [CachedSuggestion(s.text[len(typed):], s.finish_reason)
                        for s in e.suggestions if s.text.startswith(typed) and s.text[len(typed):].strip()]
                if rest:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return rest
            self.misses += 1
            return None

    def invalidate(self, uri: str) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.uri == uri]:
                del self._entries[key]
