"""The completion pipeline: cache -> context -> token healing -> engine -> post-processing.

`Completer.complete` is what the language server calls for every inline completion
request. Decoding policy:

* automatic trigger: greedy, one candidate;
* explicit invocation: sampling (`temperature`, `top_p`), `num_candidates` candidates,
  identical ones merged (greedy and one candidate when temperature is 0 or
  num_candidates is 1);
* stop on end-of-text, `prompt.PYTHON_STOP_SEQUENCES` + `settings.stop`, at
  `max_new_tokens` and at the wall-clock budget `time_budget_ms`; a "\\n" stop too when
  only one line can be used (single-line mode, or text after the cursor on its line);
* `is_cancelled` goes to the engine, which checks it before every token; a cancelled
  request returns no suggestion;
* early stop (`early_stop`, on by default): a multi-line suggestion stops decoding as soon
  as post-processing is certain to cut it where it is (a line left the cursor's block or
  repeats the line after the cursor, `postprocess.settled_length`), so the tokens it would
  throw away are never decoded; the suggestion shown is the same as without it. A one-line
  suggestion already stops at its line break (the "\\n" stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass

from codeparrot_ls import prompt as P
from codeparrot_ls.cache import CachedSuggestion, SuggestionCache
from codeparrot_ls.engine.base import Engine, GenerationRequest
from codeparrot_ls.engine.decoding import Decoder
from codeparrot_ls.postprocess import CursorContext, postprocess, settled_length
from codeparrot_ls.prompt_builder import SERVED_LAYOUT, PromptBuilder
from codeparrot_ls.settings import CompletionSettings

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    insert_text: str             # inserted at the cursor ("\n" line breaks)
    from_cache: bool
    finish_reason: str


@dataclass
class CompletionStats:
    requests: int = 0
    cache_hits: int = 0
    model_runs: int = 0
    cancelled: int = 0
    dropped: int = 0             # generations that post-processing left empty
    generated_tokens: int = 0    # tokens decoded, all requests
    last_healed: str = ""        # text token healing removed from the last prompt
    last_prompt_tokens: int = 0
    last_reused_tokens: int = 0
    last_generated_tokens: int = 0
    last_definitions: int = 0    # workspace definitions in the last prompt
    last_ms: float = 0.0


def stops_for(required_prefix: str, stops: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split stop strings into those the engine may match and those that could match
    inside (or right at the end of) the healed text the model must re-type first; the
    engine matches stops on all generated text, so those are applied after the fact to the
    suggestion alone."""
    engine_side, after = [], []
    for s in dict.fromkeys(stops):
        if not s:
            continue
        overlaps = s in required_prefix or any(required_prefix.endswith(s[:k]) for k in range(1, len(s)))
        (after if overlaps else engine_side).append(s)
    return engine_side, after


def cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _stop_starts(text: str, stops: Sequence[str]):
    """Offsets where a stop string occurs in `text`, or begins and may go on past its end."""
    for s in stops:
        if not s:
            continue
        p = text.find(s)
        while p >= 0:
            yield p
            p = text.find(s, p + 1)
        p = text.find(s[0], max(len(text) - len(s) + 1, 0))
        while p >= 0:
            if s.startswith(text[p:]):
                yield p
            p = text.find(s[0], p + 1)


def early_stop_rule(required: str, cursor: CursorContext, stops: Sequence[str]) -> Callable[[str], int | None]:
    """`GenerationRequest.stop_when` for a multi-line suggestion: the generated text is
    `required` (healed text the model re-types) + the suggestion; the suggestion is cut at
    `stops` (by the engine or after it). Stops only when the shown suggestion cannot depend
    on what would be generated next: post-processing settles the cut, and no stop string
    could begin inside the text that decided it (except exactly at the cut)."""
    def stop_when(text: str) -> int | None:
        if not text.startswith(required):
            return None
        body = text[len(required):]
        settled = settled_length(body, cursor)
        if settled is None:
            return None
        length, evidence = settled
        if any(p < evidence and p != length for p in _stop_starts(body, stops)):
            return None
        return len(required) + length

    return stop_when


class Completer:
    def __init__(self, engine: Engine, layout: str = SERVED_LAYOUT, healing_policy: str = "boundary",
                 early_stop: bool = True):
        self.decoder = Decoder(engine)   # the token table is built here, when the model loads
        self.early_stop = early_stop
        # The one prompt builder (evaluation and `codeparrot complete` use it too).
        self.builder = PromptBuilder.for_engine(engine, layout, healing_policy)
        self.tokenizer = self.builder.tokenizer
        self.cache = SuggestionCache()
        self.stats = CompletionStats()
        self._engine_lock = threading.Lock()  # the engine serves one generation at a time

    @property
    def engine(self) -> Engine:
        return self.decoder.engine

    def complete(self, uri: str, text: str, offset: int,
                 settings: CompletionSettings, invoked: bool,
                 other_documents: Sequence[tuple[str, str]] = (),
                 is_cancelled: Callable[[], bool] | None = None, repo=None) -> list[Suggestion]:
        """Suggestions at `offset` (code points) of `text`, whose line breaks are all "\n"
        (`codeparrot_ls.positions.locate` gives both)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + settings.time_budget_ms / 1000.0    # every stage counts
        if not 0 <= offset <= len(text):
            raise ValueError(f"offset {offset} outside a document of {len(text)} characters")
        self.stats.requests += 1
        if not settings.enabled:
            return []
        key = self._settings_key(settings)
        cached = self.cache.lookup(uri, text, offset, key, invoked)
        if cached is not None:
            self.stats.cache_hits += 1
            self.stats.last_ms = (time.perf_counter() - t0) * 1e3
            return [Suggestion(c.text, True, c.finish_reason) for c in cached]
        if is_cancelled is not None and is_cancelled():
            self.stats.cancelled += 1
            return []

        others = [(u, t) for u, t in other_documents if u != uri]
        prompt = self.builder.build(text, offset, settings, others, uri=uri, repo=repo)
        if is_cancelled is not None and is_cancelled():
            self.stats.cancelled += 1
            return []
        self.stats.last_healed = prompt.required_prefix
        self.stats.last_definitions = len(prompt.context.definitions)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("prompt for %s:%d: %d tokens; before the document:\n%s", uri, text.count("\n", 0, offset) + 1,
                      len(prompt.ids), self.tokenizer.decode(prompt.context.head_ids, skip_special_tokens=False))

        stops = [*P.PYTHON_STOP_SEQUENCES, *settings.stop, *(["\n"] if prompt.one_line else [])]
        engine_stops, later_stops = stops_for(prompt.required_prefix, stops)
        request = self._request(prompt, settings, invoked, stops, engine_stops, deadline, is_cancelled)
        with self._engine_lock:
            generations = self.decoder.generate(request)
        self.stats.model_runs += 1
        if generations:
            self.stats.last_prompt_tokens = generations[0].prompt_tokens
            self.stats.last_reused_tokens = generations[0].reused_tokens
            self.stats.last_generated_tokens = sum(len(g.token_ids) for g in generations)
            self.stats.generated_tokens += self.stats.last_generated_tokens
        if any(g.finish_reason == "cancelled" for g in generations):
            self.stats.cancelled += 1
            return []

        shown = self._shown(generations, prompt, later_stops, 1 if invoked else settings.min_chars, is_cancelled)
        if shown is None:
            self.stats.cancelled += 1
            return []
        # Kept even when the request was cancelled after decoding finished: the user
        # typing on along it is the next request, and the cache answers that one.
        self.cache.store(uri, text, offset, shown.values(), key, invoked)
        self.stats.last_ms = (time.perf_counter() - t0) * 1e3
        if is_cancelled is not None and is_cancelled():
            self.stats.cancelled += 1
            return []
        return [Suggestion(s.text, False, s.finish_reason) for s in shown.values()]

    def _request(self, prompt, settings: CompletionSettings, invoked: bool, stops: list[str],
                 engine_stops: list[str], deadline: float,
                 is_cancelled: Callable[[], bool] | None) -> GenerationRequest:
        """What to decode: greedy, or sampled candidates when invoked and settings ask for them."""
        sampling = invoked and settings.temperature > 0 and settings.num_candidates > 1
        required = prompt.required_prefix
        return GenerationRequest(
            prompt_ids=prompt.ids,
            max_new_tokens=min(settings.max_new_tokens + prompt.n_healed, self.builder.n_positions - len(prompt.ids)),
            temperature=settings.temperature if sampling else 0.0,
            top_p=settings.top_p if sampling else 1.0,
            num_samples=settings.num_candidates if sampling else 1,
            stop=engine_stops,
            deadline=deadline,
            is_cancelled=is_cancelled,
            required_prefix=required,
            # One line: the "\n" stop already ends it.
            stop_when=(early_stop_rule(required, prompt.cursor, stops) if self.early_stop and not prompt.one_line
                       else None),
            lookup_tokens=settings.lookup_tokens,
        )

    def _shown(self, generations, prompt, later_stops: list[str], min_chars: int,
               is_cancelled: Callable[[], bool] | None) -> dict[str, CachedSuggestion] | None:
        """The distinct post-processed suggestions by text (None: cancelled meanwhile)."""
        required = prompt.required_prefix
        shown: dict[str, CachedSuggestion] = {}
        for g in generations:
            if is_cancelled is not None and is_cancelled():
                return None
            if not g.text.startswith(required):
                self.stats.dropped += 1     # the budget ran out while re-typing the healed text
                continue
            body, stopped = cut_at_stops(g.text[len(required):], later_stops)
            finish = "stop" if stopped else g.finish_reason
            final = postprocess(body, prompt.cursor, single_line=prompt.one_line, min_chars=min_chars)
            if final is None:
                self.stats.dropped += 1
            elif final not in shown:
                shown[final] = CachedSuggestion(final, finish)
        return shown

    def forget(self, uri: str) -> None:
        """Drop everything kept for a document (it was closed)."""
        self.builder.forget(uri)
        self.cache.invalidate(uri)

    @staticmethod
    def _settings_key(settings: CompletionSettings) -> tuple:
        return astuple(settings)

    def close(self) -> None:
        self.decoder.close()
