"""What happens to the suggestions an editor shows, counted on this machine only.

Editors report it three ways: the accept command attached to every suggestion
(`codeparrot.acceptCompletion`, run when a whole suggestion is accepted), and the
Copilot-compatible notifications `textDocument/didShowCompletion` (a suggestion was shown) and
`textDocument/didPartiallyAcceptCompletion` (its first `acceptedLength` characters, counted
from the start of its insertText, were accepted: a word or a line of it). The counts appear in
`codeparrot.stats`; nothing is sent anywhere.
"""

from __future__ import annotations

import threading
from typing import Any


def _field(obj: Any, name: str) -> Any:
    """A field of notification params: pygls gives unknown methods' params as objects, tests
    and other callers may give dicts."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _insert_text(item: Any) -> str | None:
    text = _field(item, "insertText")
    if text is not None and not isinstance(text, str):     # a StringValue (snippet)
        text = _field(text, "value")
    return text if isinstance(text, str) else None


class Acceptance:
    def __init__(self) -> None:
        self.shown = 0
        self.accepted = 0
        self.partially_accepted = 0
        self.partial_chars = 0          # characters accepted by partial accepts
        self._lock = threading.Lock()

    def did_show(self, params: Any) -> None:
        with self._lock:
            self.shown += 1

    def did_accept(self) -> int:
        with self._lock:
            self.accepted += 1
            return self.accepted

    def did_partially_accept(self, params: Any) -> str | None:
        """Counts a partial accept; returns why the params are not one (None when they are)."""
        length = _field(params, "acceptedLength")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            return f"acceptedLength must be a non-negative integer, not {length!r}"
        text = _insert_text(_field(params, "item"))
        with self._lock:
            self.partially_accepted += 1
            self.partial_chars += length if text is None else min(length, len(text.encode("utf-16-le")) // 2)
        return None

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"shown": self.shown, "accepted": self.accepted,
                    "partiallyAccepted": self.partially_accepted, "partiallyAcceptedChars": self.partial_chars,
                    # Whole suggestions accepted per suggestion shown (null until one is shown).
                    "acceptanceRate": round(self.accepted / self.shown, 4) if self.shown else None}
