"""The one prompt builder: document + cursor -> the token ids the engine runs.

The language server (codeparrot_ls/completion.py), `codeparrot evaluate` (line completion,
HumanEval) and `codeparrot complete` all call `PromptBuilder.build`, so every quality
number measures exactly the prompt the editor gets. One call decides, in this order:

1. FIM or left to right (`use_fim`): `settings.fim` true/false forces it; null leaves it
   to the request (`fim_wanted`: FIM only where the text after the cursor holds code)
   and to the model's measured default (export.json `"serving": {"fim": false}` turns
   FIM off for a model whose FIM prompts scored below left to right).
2. The context (codeparrot_ls/context.py): `<|endoftext|>` first, as every training
   document starts, then other-file snippets, the quality token, the prefix and suffix
   windows fitted to the token budget.
3. Token healing (codeparrot_ls/healing.py): the prefix's last pre-token leaves the
   prompt and the generation must re-type it (`Prompt.required_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from codeparrot_ls import prompt as P
from codeparrot_ls.context import ContextBuilder, PromptContext
from codeparrot_ls.healing import heal
from codeparrot_ls.postprocess.cursor import CursorContext, indent_width

# The FIM layout the language server prompts with: the prefix is the prompt's last piece,
# so typing only changes the prompt's end (KV reuse; codeparrot_ls/context.py).
SERVED_LAYOUT = "spm"
# Where the text after the cursor is (`suffix_kind`); the per-request FIM rule and the
# evaluation's breakdown use the same names.
SUFFIX_KINDS = ("none", "line", "deeper", "same", "shallower")
# The kinds where a request left to the model (`fim` null) gets a FIM prompt.
FIM_SUFFIX_KINDS = frozenset({"line", "deeper", "same", "shallower"})


def suffix_kind(text: str, offset: int) -> str:
    """Where the code after the cursor is: "none" (only whitespace follows: the end of a
    file), "line" (on the cursor's line), or on a later line whose indentation is
    "deeper", the "same" as or "shallower" than the cursor's line."""
    end = text.find("\n", offset)
    end = len(text) if end < 0 else end
    if text[offset:end].strip():
        return "line"
    rest = text[end:].lstrip("\n \t\r\f")
    if not rest:
        return "none"
    start = text.rfind("\n", 0, offset) + 1
    line = text[start:end]
    # The next non-blank line: its indentation against the cursor line's (the text
    # before the cursor when the line is blank so far).
    nxt_start = text.rfind("\n", 0, len(text) - len(rest)) + 1
    nxt_end = text.find("\n", nxt_start)
    nxt = text[nxt_start:len(text) if nxt_end < 0 else nxt_end]
    here = indent_width(line) if line.strip() else indent_width(text[start:offset])
    there = indent_width(nxt)
    return "deeper" if there > here else "same" if there == here else "shallower"


def fim_wanted(text: str, offset: int) -> bool:
    """The per-request rule: FIM when code follows the cursor (`FIM_SUFFIX_KINDS`)."""
    return suffix_kind(text, offset) in FIM_SUFFIX_KINDS


@dataclass
class Prompt:
    ids: list[int]              # what the engine runs
    required_prefix: str        # healed text the generation must start with ("" = none)
    layout: str                 # "l2r", "spm" or "psm"
    one_line: bool              # only one line can be used (settings.single_line or code after the cursor)
    n_healed: int               # prefix tokens token healing took out of the prompt
    cursor: CursorContext
    context: PromptContext


class PromptBuilder:
    """Builds prompts for one model; keeps the context builder's caches."""

    def __init__(self, tokenizer: Tokenizer, special_ids: dict[str, int], n_positions: int,
                 supports_fim: bool, *, quality_conditioning: bool = False, layout: str = SERVED_LAYOUT,
                 fim_default: bool = True, healing_policy: str = "boundary", eos_id: int | None = None):
        if layout not in P.LAYOUTS:
            raise ValueError(f"unknown FIM layout {layout!r}; expected one of {P.LAYOUTS}")
        # A private copy that encodes text spelling a special token ("<|endoftext|>" in a
        # docstring) as plain text, never as the special token (as training did).
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.encode_special_tokens = True
        self.fim_default = fim_default          # False: the model's FIM measured worse (export.json)
        self.healing_policy = healing_policy    # see codeparrot_ls.healing.heal
        quality = quality_conditioning and P.BEST_QUALITY_TOKEN in special_ids
        self.context = ContextBuilder(self.tokenizer, dict(special_ids), n_positions, supports_fim,
                                      quality, layout, eos_id)

    @classmethod
    def for_engine(cls, engine, layout: str = SERVED_LAYOUT, healing_policy: str = "boundary") -> "PromptBuilder":
        info = engine.info
        return cls(engine.tokenizer, info.special_ids, info.n_positions, info.supports_fim,
                   quality_conditioning=bool(info.extra.get("quality_conditioning")), layout=layout,
                   fim_default=info.fim_default, healing_policy=healing_policy, eos_id=info.eos_id)

    @property
    def n_positions(self) -> int:
        return self.context.n_positions

    @property
    def counter(self):
        return self.context.counter

    @property
    def snippet_index(self):
        return self.context.snippet_index

    def use_fim(self, text: str, offset: int, settings) -> bool:
        if not self.context.supports_fim or settings.fim is False:
            return False
        if settings.fim:
            return True
        return self.fim_default and fim_wanted(text, offset)

    def forget(self, uri: str) -> None:
        """Drop what is kept between requests on `uri` (its prefix window's start)."""
        self.context.forget(uri)

    def build(self, text: str, offset: int, settings, other_documents: Sequence[tuple[str, str]] = (),
              uri: str | None = None, line: int | None = None, repo=None) -> Prompt:
        """The prompt for the cursor at str index `offset` of `text` (`line`: its line
        number, counted when not given), with snippets of `other_documents` (uri, text)
        and, with `repo` (codeparrot_ls.repo_context.RepoContext), of the workspace. With
        `uri`, the prefix window's first line is kept from the previous request on the same
        document while it fits (KV reuse while typing). Raises ValueError when the
        settings leave no room for a prompt."""
        if not 0 <= offset <= len(text):
            raise ValueError(f"cursor offset {offset} outside a document of {len(text)} characters")
        if line is None:
            line = text.count("\n", 0, offset)
        # From here on only the part of the document that can reach the prompt is read
        # (the workspace context still reads the whole document's imports).
        document = text
        text, start = self.context.window(document, offset, settings)
        offset -= start
        cursor = CursorContext.from_document(text, offset)
        one_line = settings.single_line or cursor.mid_line
        ctx = self.context.build(text, offset, line, settings, other_documents, uri, repo,
                                 use_fim=self.use_fim(text, offset, settings), document=document)
        prefix_ids, required = ctx.prefix_ids, ""
        if settings.token_healing:
            healed = heal(self.tokenizer, ctx.prefix, ctx.prefix_ids, self.healing_policy)
            prefix_ids, required = healed.prefix_ids, healed.removed_text
            if one_line and "\n" in required:
                # The one-line "\n" stop would match inside the re-typed text: keep the
                # line break in the prompt and re-type only what follows it.
                cut = required.rindex("\n") + 1
                prefix_ids = prefix_ids + self.counter.encode(required[:cut])
                required = required[cut:]
        return Prompt(ctx.prompt_ids(prefix_ids), required, ctx.layout, one_line,
                      len(ctx.prefix_ids) - len(prefix_ids), cursor, ctx)
