"""`settled_length`: once it says a suggestion being generated is cut for good, nothing
generated after that changes what post-processing shows. Checked on real code: cursors
at line ends and on new lines in the tests' data files and two standard-library modules,
with the real continuation as the "model" output and other endings after it."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from codeparrot_ls.postprocess import CursorContext, postprocess, settled_length
from codeparrot_ls.postprocess.endings import _may_continue, block_end_line

DATA = Path(__file__).parent / "data"
FILES = [*sorted(DATA.glob("*.py")), Path(textwrap.__file__), Path(textwrap.__file__).parent / "pprint.py"]
MAX_CHARS = 400
OTHER_ENDINGS = ["", "\n", "    else:\n        pass\n", "\nreturn x\n", "elif y:\n", "  # note\n", "\n\n\n",
                 "def f():\n", ")\n    x = 1\n"]


def cases(text: str, rng: random.Random, n: int):
    """(document, cursor offset, what the model writes there): the cursor at the end of a
    line (document as is, or ending there, or with the next few lines taken out) or on a
    new indented line; the model writes the real text that followed."""
    ends = [i for i, ch in enumerate(text) if ch == "\n" and text[:i].strip()]
    for off in rng.sample(ends, n):
        cont = text[off:off + MAX_CHARS]
        kind = rng.randrange(4)
        if kind == 0:
            yield text, off, cont
        elif kind == 1:
            yield text[:off], off, cont
        elif kind == 2:
            gap = off
            for _ in range(rng.randint(1, 6)):
                nxt = text.find("\n", gap + 1)
                gap = len(text) if nxt < 0 else nxt
            yield text[:off] + text[gap:], off, cont
        else:  # a new line, indented like the next one, typed at the end of this one
            nxt = text[off + 1:].split("\n", 1)[0]
            indent = nxt[:len(nxt) - len(nxt.lstrip(" \t"))]
            doc = text[:off] + "\n" + indent + text[off:]
            yield doc, off + 1 + len(indent), text[off + 1 + len(indent):off + MAX_CHARS]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_nothing_after_the_settled_length_changes_the_suggestion(path):
    rng = random.Random(path.name)
    text = path.read_text(encoding="utf-8")
    settled = total = 0
    for doc, off, cont in cases(text, rng, 40):
        ctx = CursorContext.from_document(doc, off)
        total += 1
        for n in range(len(cont) + 1):
            got = settled_length(cont[:n], ctx)
            if got is not None:
                break
        else:
            continue
        settled += 1
        length, evidence = got
        assert length <= evidence <= n
        want = postprocess(cont[:length], ctx)
        # The model may go on with anything after what it wrote, and a stop string may cut
        # the result at the cut or anywhere past the evidence.
        endings = [cont[:m] for m in range(evidence, len(cont) + 1, 7)] + [cont, cont[:length]]
        for e in OTHER_ENDINGS:
            endings += [(cont[:n] + e)[:m] for m in range(evidence, n + len(e) + 1, 3)]
        for full in endings:
            assert postprocess(full, ctx) == want, (doc[max(0, off - 80):off], full)
    assert settled >= total // 4  # real code ends blocks and reaches the following line often


def test_a_line_still_being_written_counts_only_once_decided():
    ctx = CursorContext.from_document("def f(x):\n    if x:", len("def f(x):\n    if x:"))
    body = "\n        return 1\n    "
    for partial, settles in [("", False), ("e", False), ("el", False), ("else", False), ("else:", False),
                             ("else ", False), ("elsewhere", True), ("return", True), ("x", True)]:
        got = settled_length(body + partial, ctx)
        assert (got is not None) == settles, partial
        if settles:
            assert got == (len(body) - 5, len(body + partial))
    # Below the block's indentation it is decided by the first visible character.
    assert settled_length(body[:-4] + "e", ctx) == (len(body) - 5, len(body) - 3)
    # A whole line that repeats the code after the cursor settles it; half of it does not.
    doc = "def f(x):\n    y = x\n    return y\n"
    ctx = CursorContext.from_document(doc, len("def f(x):\n    y = x"))
    assert settled_length("\n    return y\n", ctx) == (0, len("\n    return y"))
    assert settled_length("\n    return", ctx) is None


def test_partial_first_words():
    assert _may_continue("    el", complete=False) and _may_continue("    except", complete=False)
    assert _may_continue("else::", complete=False) and not _may_continue("elsex", complete=False)
    assert not _may_continue("else\t", complete=False) and _may_continue("fin", complete=False)
    assert _may_continue("else: x", complete=False) and not _may_continue("elsewhere = 1", complete=False)
    lines = ["", "    pass", "e"]
    ctx = CursorContext.from_document("if x:", 5)
    assert block_end_line(lines, ctx) == 2 and block_end_line(lines, ctx, last_partial=True) is None
