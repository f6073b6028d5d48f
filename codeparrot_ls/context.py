"""Document + cursor -> the prompt's pieces: prefix, suffix and snippets from other open
files, fitted to a token budget with the model's real tokenizer.

The document comes with every line break written "\n" and the cursor as a code-point
offset into it (`codeparrot_ls.positions.locate` makes both from the client's position).
The prompt itself (FIM choice, token healing, the final ids) is assembled by
`codeparrot_ls.prompt_builder.PromptBuilder`, the one builder the server, `codeparrot
evaluate` and `codeparrot complete` share. Layout of the prompt token ids (every piece
tokenized separately)::

    <|endoftext|>  [workspace block, <|endoftext|>]  [snippet block, <|endoftext|>]  [quality token]  FIM prompt (or the bare prefix)

* Every prompt starts like a training document (trainer/pretraining/data.py joins documents with
  `<|endoftext|>` and puts the quality token at a document's start), so even an empty
  prefix (a new file) is a valid prompt.
* The FIM prompt comes from `codeparrot_ls.prompt.fim_prompt_ids`. Serving uses the SPM
  layout by default: there the prefix is the *last* piece, so a typed character only
  changes the end of the prompt and the engine's KV prefix reuse serves everything before
  it. Left-to-right prompts are the prefix alone.
* Snippets from other open Python documents form a separate leading "document": the code
  windows most similar to the lines above the cursor (Jaccard over identifier sets), each
  under a `# <file name>` comment line, then `<|endoftext|>` - the way packed training
  data puts a previous file before the current one. They are chosen from the lines
  *above* the cursor's line only, so typing within a line never changes them (and never
  breaks KV reuse, since they sit at the very beginning). Windows and their index live in
  codeparrot_ls/snippets.py; the server indexes a document when it is opened.
* The workspace block (`settings.workspace_context`; codeparrot_ls/repo_context.py):
  definitions of the workspace names the cursor's line uses, and windows of their modules.
  It is fitted last, into what the document's lines left of the budget, so it never
  displaces them; where the cursor's line uses no workspace name there is none, and the
  prompt is exactly the one without workspace context.
* The window of lines kept around the cursor grows outward line by line (prefix first,
  then the suffix with its share `settings.suffix_share`; unused budget moves to the
  other side), with cached per-line token counts; a prefix window keeps its first line
  while typing (codeparrot_ls/fitting.py), again for KV reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codeparrot_ls import prompt as P
from codeparrot_ls.fitting import TokenCounter, grow_prefix, grow_suffix
from codeparrot_ls.settings import MIN_PROMPT_TOKENS
from codeparrot_ls.snippets import SNIPPET_WINDOW_LINES, Snippet, SnippetIndex, format_snippet, identifiers, rank_snippets

SUFFIX_ROOM_STEP = 64
QUERY_LINES = 20
# Stop looking for snippets when fewer tokens than this are left (two lines of code rarely fit).
MIN_SNIPPET_ROOM = 16
# Ranked windows a request looks at: at most 8 are kept, and overlapping neighbours of a kept
# one or windows that do not fit are skipped, so the best 64 are more than enough.
SNIPPET_CANDIDATES = 64
# Tokens of the cursor's line the workspace block leaves room for (see `_workspace_room`).
LINE_RESERVE = 32


@dataclass
class PromptContext:
    prefix: str                 # document text kept before the cursor (starts at a line start)
    suffix: str                 # document text kept after the cursor (FIM only)
    prefix_ids: list[int]
    suffix_ids: list[int]
    head_ids: list[int]         # end-of-text [+ snippet block + end-of-text] [+ quality token]
    layout: str                 # "spm" | "psm" | "l2r"
    special_ids: dict[str, int]
    snippets: list[Snippet] = field(default_factory=list)
    prefix_start_line: int = 0
    suffix_end_line: int = 0    # last document line (inclusive) with text in the suffix
    definitions: list = field(default_factory=list)   # repo_context.FoundDefinition, most relevant first

    def prompt_ids(self, prefix_ids: Sequence[int] | None = None) -> list[int]:
        """The prompt, optionally with other prefix ids (token healing backs the prefix up)."""
        pre = self.prefix_ids if prefix_ids is None else list(prefix_ids)
        if self.layout == "l2r":
            return [*self.head_ids, *pre]
        return [*self.head_ids, *P.fim_prompt_ids(pre, self.suffix_ids, self.special_ids, self.layout)]


@dataclass
class ContextBuilder:
    """Builds `PromptContext`s for one model; keeps token-count and snippet caches."""

    tokenizer: object
    special_ids: dict[str, int]
    n_positions: int
    supports_fim: bool
    quality_conditioning: bool = False
    layout: str = "spm"               # the FIM layout ("spm" or "psm") when a request uses FIM
    eos_id: int | None = None         # when the vocabulary has no END_OF_TEXT

    def __post_init__(self):
        self.counter = TokenCounter(self.tokenizer)
        self.snippet_index = SnippetIndex()
        self._sticky: dict[str, int] = {}   # uri -> first line of the last prefix window
        self.eos_id = self.special_ids.get(P.END_OF_TEXT, self.eos_id)
        if self.eos_id is None:
            raise ValueError("the tokenizer has no end-of-text token: prompts could not start like training documents")
        self.quality_id = self.special_ids.get(P.BEST_QUALITY_TOKEN) if self.quality_conditioning else None

    def prompt_budget(self, settings) -> int:
        """Tokens of document text at most in a prompt: `context_tokens`, within what the model
        holds besides the new tokens (a `max_new_tokens` too large for the model keeps
        `MIN_PROMPT_TOKENS` for the prompt instead of failing)."""
        max_new = min(settings.max_new_tokens, self.n_positions - MIN_PROMPT_TOKENS)
        return max(min(settings.context_tokens, self.n_positions - max_new), 0)

    def window(self, text: str, offset: int, settings) -> tuple[str, int]:
        """(the part of `text` that can reach a prompt at `offset`, where it starts in `text`).

        A prompt holds at most `prompt_budget` tokens of the document on either side of the
        cursor, and a token covers at most `max_token_chars` characters, so nothing further
        away can matter: a request then costs the same on a 10 MB line or a 200,000-line
        document as on a small file. (The window holds more tokens than the budget on each
        side it cuts, so the lines `build` grows around the cursor never reach a cut edge
        and take it for the document's start or end.)"""
        reach = (self.prompt_budget(settings) + 1) * self.counter.max_token_chars
        start = max(0, offset - reach)
        return text[start:offset + reach], start

    def forget(self, uri: str) -> None:
        """Drop what is kept for a document (it was closed): its prefix window's start and
        its snippet windows."""
        self._sticky.pop(uri, None)
        self.snippet_index.forget(uri)

    def build(self, text: str, offset: int, line: int, settings,
              other_documents: Sequence[tuple[str, str]] = (), uri: str | None = None,
              repo=None, *, use_fim: bool = True, document: str | None = None) -> PromptContext:
        """The context at `offset` (on `line`), for a FIM prompt (when the model has FIM
        tokens) or a left-to-right one (`use_fim`: `PromptBuilder` decides it per request).
        With `uri`, the window's first line is kept from the previous request on the same
        document while it fits (see `fitting.grow_prefix`). `repo` (a
        codeparrot_ls.repo_context.RepoContext) adds the workspace's definitions and windows
        when `settings.workspace_context` is on; it reads the whole `document` (its imports)
        when `text` is a `window` of it."""
        use_fim = use_fim and self.supports_fim
        layout = self.layout if use_fim else "l2r"
        # Fixed tokens: the leading end-of-text, the quality token, the FIM sentinels.
        n_fixed = 1 + (P.FIM_PROMPT_TOKENS if use_fim else 0) + (1 if self.quality_id is not None else 0)
        # The prompt and the new tokens must fit the model's positions.
        budget = self.prompt_budget(settings) - n_fixed
        if budget < 8:
            raise ValueError(f"context budget too small: n_positions {self.n_positions}, "
                             f"max_new_tokens {settings.max_new_tokens}")

        line_start = text.rfind("\n", 0, offset) + 1
        line_end = text.find("\n", offset)
        line_end = len(text) if line_end < 0 else line_end

        head_ids, snippets, definitions = [self.eos_id], [], []
        if other_documents and settings.other_files_tokens > 0:
            block, snippets, _ = self._snippet_block(
                text, line_start, other_documents, min(settings.other_files_tokens, budget // 4))
            head_ids += block
            budget -= len(block)
        if self.quality_id is not None:
            head_ids.append(self.quality_id)

        suffix_budget = int(budget * settings.suffix_share) if use_fim else 0
        sticky = self._sticky.get(uri) if uri is not None else None
        prefix_text, prefix_ids, start_line, p_done = grow_prefix(
            self.counter, text, offset, line_start, line, budget - suffix_budget, sticky)
        suffix_text, suffix_ids, end_line = "", [], line
        if use_fim:
            room = suffix_budget
            if p_done:  # the suffix may use what the prefix left, in steps (a stable suffix)
                room = max(suffix_budget, (budget - len(prefix_ids)) // SUFFIX_ROOM_STEP * SUFFIX_ROOM_STEP)
            suffix_text, suffix_ids, end_line, s_done = grow_suffix(self.counter, text, offset, line_end, line, room)
            if s_done and not p_done and len(prefix_ids) + len(suffix_ids) < budget:
                prefix_text, prefix_ids, start_line, _ = grow_prefix(
                    self.counter, text, offset, line_start, line, budget - len(suffix_ids), sticky)
        if repo is not None and settings.workspace_context:
            findings = repo.gather(uri, text if document is None else document, line, text[line_start:offset])
            room = self._workspace_room(budget, len(prefix_ids) + len(suffix_ids), text[line_start:offset], settings)
            if (findings.definitions or findings.documents) and room >= MIN_SNIPPET_ROOM:
                block, found_windows, definitions = self._snippet_block(text, line_start, (), 0, findings, room, repo)
                head_ids[1:1] = block       # the workspace's "file" first, then the open documents'
                snippets = found_windows + snippets
        if uri is not None:
            if len(self._sticky) > 256:
                self._sticky.clear()
            self._sticky[uri] = start_line
        return PromptContext(prefix_text, suffix_text, prefix_ids, suffix_ids, head_ids, layout,
                             self.special_ids, snippets, start_line, end_line, definitions)

    def _workspace_room(self, budget: int, document_tokens: int, cursor_head: str, settings) -> int:
        """Tokens the workspace block may take: only what the document's prefix and suffix
        left of the budget (they are fitted first and never shrink for it: taking their lines
        cost more than definitions gave), at most `workspace_share` of the budget. The cursor
        line's text before the cursor counts as `LINE_RESERVE` tokens until it is longer, so
        typing on the line leaves the block as it is (the engine's KV reuse goes on)."""
        free = budget - document_tokens
        typed = self.counter.counts([cursor_head])[0] if cursor_head else 0
        return min(int(budget * settings.workspace_share), free, free + typed - LINE_RESERVE)

    # -- other documents ---------------------------------------------------------------

    def _snippet_block(self, text, line_start, other_documents, budget, findings=None, repo_budget=0, repo=None):
        """A leading block: windows of other documents (the open ones, or the workspace files
        in `findings`), then definitions of imported names, most relevant last, then
        end-of-text. Definitions take `repo_budget` first (most relevant first); windows get
        `budget` plus what the definitions left."""
        # Query: identifiers of the lines above the cursor's line (stable while typing on it).
        q_start = line_start
        for _ in range(QUERY_LINES):
            if q_start == 0:
                break
            q_start = text.rfind("\n", 0, q_start - 1) + 1
        query = identifiers(text[q_start:line_start])
        definitions, used = [], 1  # 1: the end-of-text separator
        for found in (findings.definitions if findings else ()):
            n = self.counter.counts([_definition_text(found)])[0]
            if used + n <= repo_budget:
                definitions.append(found)
                used += n
            elif repo_budget - used < MIN_SNIPPET_ROOM:
                break
        head_budget = budget + repo_budget
        budget = head_budget - (used - 1)   # windows: the rest
        ranked = rank_snippets(query, other_documents, self.snippet_index, limit=SNIPPET_CANDIDATES)
        if findings and findings.documents:
            ranked += rank_snippets(query, findings.documents, repo.windows, limit=SNIPPET_CANDIDATES)
            ranked.sort(key=lambda s: -s.score)   # stable: open documents first on ties
        chosen, used = [], 1
        for snip in ranked:
            room = budget - used
            if room < MIN_SNIPPET_ROOM:
                break
            if any(c.uri == snip.uri and abs(c.start_line - snip.start_line) < SNIPPET_WINDOW_LINES
                   for c in chosen):
                continue  # overlapping window of a chosen one
            # Per-line counts (cached across windows and requests) decide what fits; the
            # snippet itself is encoded once, when it is kept.
            lines = snip.text.split("\n")
            line_counts = self.counter.counts([ln + "\n" for ln in lines])
            header = self.counter.counts([format_snippet(Snippet(snip.uri, 0, "", 0))])[0]
            if header + sum(line_counts) > room:  # keep the window's first lines that fit (at least two)
                keep, total = 0, header
                for c in line_counts:
                    if total + c > room:
                        break
                    keep, total = keep + 1, total + c
                if keep < 2:
                    continue
                snip = Snippet(snip.uri, snip.start_line, "\n".join(lines[:keep]), snip.score)
            n = self.counter.counts([format_snippet(snip)])[0]
            if used + n <= budget:
                chosen.append(snip)
                used += n
            if used >= budget - 8 or len(chosen) >= 8:
                break
        if not chosen and not definitions:
            return [], [], []
        # Most relevant last: nearest to the current document.
        block = "".join(format_snippet(s) for s in reversed(chosen))
        label = None
        for found in reversed(definitions):   # one `# file` line for neighbours from the same file
            block += _definition_text(found, with_label=found.label != label)
            label = found.label
        ids = self.counter.encode(block)[:head_budget - 1]
        return [*ids, self.eos_id], chosen, definitions


def _definition_text(found, with_label: bool = True) -> str:
    return (f"# {found.label}\n" if with_label else "") + found.definition.text + "\n"
