"""Early stop changes no suggestion: the real `Completer` with early stop on and off, at many
cursors in real Python files, must show exactly the same text; with it on, fewer tokens are
decoded. Run on the tests' tiny random model (torch) and on the shipped default model
(trained: it ends blocks the way code does), each request cold (no KV reuse), so both
settings compute the same way."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from codeparrot_ls import prompt as P
from codeparrot_ls.completion import Completer, _stop_starts, early_stop_rule
from codeparrot_ls.positions import line_start
from codeparrot_ls.postprocess import CursorContext
from codeparrot_ls.settings import CompletionSettings
from codeparrot_ls.status import default_model_dir

DATA = Path(__file__).parent / "data"
FILES = [DATA / "settings_module.py", DATA / "model_module.py", DATA / "settings_module_tabs.py",
         Path(textwrap.__file__).parent / "pprint.py"]
# Generous time budget: only tokens may end a suggestion, never the (shared, noisy) clock.
AUTOMATIC = CompletionSettings(max_new_tokens=48, time_budget_ms=600_000)
INVOKED_GREEDY = CompletionSettings(max_new_tokens=48, time_budget_ms=600_000, temperature=0.0)
# User stop strings that real code hits inside lines, where the block-end rule looks.
EXTRA_STOPS = CompletionSettings(max_new_tokens=48, time_budget_ms=600_000, stop=["return", "self."])


def test_the_rule_cuts_after_the_healed_text_and_defers_to_stop_strings():
    doc = "def f(x):\n    if x:\n        ret"
    ctx = CursorContext.from_document(doc, len(doc))
    body = "urn 1\nde"                      # a line back at column 0 left the block
    rule = early_stop_rule("ret", ctx, list(P.PYTHON_STOP_SEQUENCES))
    assert rule("re") is None and rule("ret" + body[:6]) is None   # healed text unfinished; block open
    assert rule("ret" + body) == len("return 1")
    # "\ndef " may start at the cut: cut there either way. A stop that could start inside
    # what decided the cut ("de" being "def"...) must be seen through first.
    assert early_stop_rule("ret", ctx, ["de"])("ret" + body) is None
    assert early_stop_rule("ret", ctx, ["1\nx"])("ret" + body) == len("return 1")  # cannot match
    assert early_stop_rule("ret", ctx, ["1\nd"])("ret" + body) is None


def test_stop_starts_lists_whole_and_unfinished_matches():
    assert sorted(_stop_starts("ab\ndef x\nde", ["\ndef ", "de", "x\nd"])) == [2, 3, 7, 8, 9]
    # An empty stop string (a user setting) matches nothing, as for the engine's stops.
    assert sorted(_stop_starts("ab\ndef x\nde", ["", "\ndef "])) == [2, 8]


def cursors(n: int, seed: int = 0):
    """(uri, document, line, offset): the end of a line (the rest of the file below,
    or the file ending there), a new line opened and indented like the next one, a line cut
    at a random column (often inside a word: token healing), or a random point inside a
    line (one-line suggestions)."""
    rng = random.Random(seed)
    for i in range(n):
        path = FILES[i % len(FILES)]
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        k = rng.choice([j for j, ln in enumerate(lines) if ln.strip()])
        kind = i % 5
        if kind == 0:
            doc, line, col = text, k, len(lines[k])
        elif kind == 1:
            doc, line, col = "\n".join(lines[:k + 1]), k, len(lines[k])
        elif kind == 2:
            nxt = next((ln for ln in lines[k + 1:] if ln.strip()), "")
            indent = nxt[:len(nxt) - len(nxt.lstrip(" \t"))]
            doc = "\n".join([*lines[:k + 1], indent, *lines[k + 1:]])
            line, col = k + 1, len(indent)
        elif kind == 3:
            col = rng.randint(len(lines[k]) - len(lines[k].lstrip()) + 1, len(lines[k]))
            doc, line = "\n".join([*lines[:k], lines[k][:col], *lines[k + 1:]]), k
        else:
            doc, line = text, k
            col = rng.randint(len(lines[k]) - len(lines[k].lstrip()), len(lines[k]))
        yield f"file:///{path.name}#{i}", doc, line, line_start(doc, line) + col


def compare(engine_on, engine_off, n: int) -> tuple[int, int, int, int, int]:
    """Asserts equal suggestions; returns (tokens decoded with early stop, without,
    suggestions shown, requests that stopped early, those of them with a healed prompt)."""
    on, off = Completer(engine_on), Completer(engine_off, early_stop=False)
    shown = stopped = healed = 0
    for i, (uri, doc, line, offset) in enumerate(cursors(n)):
        settings, invoked = {6: (INVOKED_GREEDY, True), 3: (EXTRA_STOPS, False)}.get(i % 7, (AUTOMATIC, False))
        results = []
        for c in (on, off):
            c.decoder.reset()
            results.append([s.insert_text for s in c.complete(uri, doc, offset, settings, invoked)])
        assert results[0] == results[1], (uri, line, offset)
        assert on.stats.last_generated_tokens <= off.stats.last_generated_tokens
        shown += bool(results[0])
        stopped += on.stats.last_generated_tokens < off.stats.last_generated_tokens
        healed += bool(on.stats.last_healed) and on.stats.last_generated_tokens < off.stats.last_generated_tokens
    assert on.stats.model_runs == off.stats.model_runs == n
    return on.stats.generated_tokens, off.stats.generated_tokens, shown, stopped, healed


@pytest.mark.slow
def test_same_suggestions_with_fewer_tokens_on_the_tiny_random_model(tiny_checkpoint_dir):
    from codeparrot_ls.engine import load_engine

    with_stop, without, shown, stopped, healed = compare(load_engine(tiny_checkpoint_dir, threads=1),
                                                         load_engine(tiny_checkpoint_dir, threads=1), 40)
    assert shown > 0 and stopped > 0 and with_stop < without


@pytest.mark.slow
@pytest.mark.skipif(default_model_dir() is None, reason="this install ships no default model")
def test_same_suggestions_with_fewer_tokens_on_the_default_model():
    from codeparrot_ls.engine import load_engine

    with_stop, without, shown, stopped, healed = compare(load_engine(default_model_dir(), threads=1),
                                                         load_engine(default_model_dir(), threads=1), 40)
    # Some of the early stops came after re-typing healed text (the cut is past it).
    assert shown > 10 and stopped >= 3 and healed >= 1 and with_stop < without
