"""User-facing completion settings, read from `initializationOptions` and
`workspace/didChangeConfiguration` (camelCase keys in LSP, snake_case here)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from codeparrot_ls.engine.lookup import DEFAULT_DRAFT_TOKENS


SECTION = "codeparrot"            # the settings' key in workspace/configuration and initializationOptions
# More draft tokens per pass cost more than right guesses save (a pass of 5 tokens costs ~1.5x one).
MAX_LOOKUP_TOKENS = 16
# Candidates of an explicit invocation are decoded side by side: each is a row of the KV cache
# and of every decoding step, so a few already cost several times one.
MAX_CANDIDATES = 8
# A prompt keeps at least this many of the model's positions; max_new_tokens gets the rest.
MIN_PROMPT_TOKENS = 32
MAX_TOKENS = 1 << 16            # any token count (context_tokens above the model's size is cut to it)
MAX_TIME_BUDGET_MS = 600_000
MAX_TEMPERATURE = 2.0
MAX_STOPS, MAX_STOP_CHARS = 32, 256
WORKSPACE_LIMITS = {"workspace_max_files": 1_000_000, "workspace_max_bytes": 1 << 34,
                    "workspace_max_file_bytes": 1 << 30}

@dataclass
class CompletionSettings:
    enabled: bool = True
    max_new_tokens: int = 48          # per suggestion
    context_tokens: int = 1024        # prompt budget (prefix + suffix + other files)
    suffix_share: float = 0.25        # share of the budget the suffix may take
    other_files_tokens: int = 128     # budget for snippets from other open Python documents
    fim: bool | None = None           # fill-in-the-middle when the model has FIM tokens; None: the model's choice
    single_line: bool = False         # never suggest more than one line
    num_candidates: int = 3           # when invoked explicitly (sampling); automatic = 1, greedy
    temperature: float = 0.2          # for explicit invocations; automatic triggers are greedy
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)   # extra stop sequences
    time_budget_ms: int = 1000        # wall-clock cap on one suggestion
    token_healing: bool = True
    min_chars: int = 2                # automatic suggestions with fewer visible characters are dropped
    lookup_tokens: int = DEFAULT_DRAFT_TOKENS   # greedy: prompt-lookup draft tokens per pass; 0 turns them off
    # Definitions of imported names and windows from the workspace index. Off by default: on the
    # shipped 512-position model it costs nothing but gains nothing measurable either (README).
    workspace_context: bool = False
    workspace_share: float = 0.3      # share of the prompt budget the workspace context may take
    workspace_max_files: int = 10_000           # the index stops at this many files ...
    workspace_max_bytes: int = 64_000_000       # ... or at this many bytes of source
    workspace_max_file_bytes: int = 1_000_000   # bigger files are skipped

    def updated(self, options: dict[str, Any] | None, n_positions: int | None = None) -> "CompletionSettings":
        """A copy with the known keys of `options` applied (camelCase or snake_case).

        Unknown keys are ignored; a value of the wrong type or out of its range raises
        ValueError with the key's name, so a bad configuration is reported instead of
        half-applied. `n_positions`: the loaded model's, checked as in `validate`.
        """
        if not options:
            return dataclasses.replace(self)
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in options.items():
            name = _snake(key)
            if name not in known:
                continue
            current = getattr(self, name)
            changes[name] = _coerce(key, name, value, current)
        new = dataclasses.replace(self, **changes)
        new.validate(n_positions)
        return new

    def validate(self, n_positions: int | None = None) -> None:
        """Every value in its range (ValueError naming the setting otherwise); with the
        model's `n_positions`, also that a prompt still fits beside the new tokens."""
        _within("maxNewTokens", self.max_new_tokens, 1, MAX_TOKENS)
        _within("contextTokens", self.context_tokens, 16, MAX_TOKENS)
        _within("suffixShare", self.suffix_share, 0.0, 0.9)
        _within("otherFilesTokens", self.other_files_tokens, 0, MAX_TOKENS)
        _within("numCandidates", self.num_candidates, 1, MAX_CANDIDATES)
        _within("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"topP must be in (0, 1] (got {self.top_p!r})")
        _within("timeBudgetMs", self.time_budget_ms, 1, MAX_TIME_BUDGET_MS)
        _within("minChars", self.min_chars, 0, MAX_TOKENS)
        _within("lookupTokens", self.lookup_tokens, 0, MAX_LOOKUP_TOKENS)
        _within("workspaceShare", self.workspace_share, 0.0, 0.75)
        for name, high in WORKSPACE_LIMITS.items():
            _within(_camel(name), getattr(self, name), 1, high)
        if len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop: at most {MAX_STOPS} strings (got {len(self.stop)})")
        if any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop: every string needs 1 to {MAX_STOP_CHARS} characters (got {self.stop!r})")
        if n_positions is not None and self.max_new_tokens > n_positions - MIN_PROMPT_TOKENS:
            raise ValueError(f"maxNewTokens must be at most {n_positions - MIN_PROMPT_TOKENS} for this model "
                             f"({n_positions} positions, {MIN_PROMPT_TOKENS} kept for the prompt; got "
                             f"{self.max_new_tokens})")


def client_options(options: Any) -> dict[str, Any]:
    """Settings are accepted flat or under a `codeparrot` key (as VS Code and Neovim send them)."""
    if not isinstance(options, dict):
        return {}
    inner = options.get(SECTION)
    return inner if isinstance(inner, dict) else options


def _within(key: str, value, low, high) -> None:
    # (NaN fails every comparison: it is refused here too.)
    if not low <= value <= high:
        raise ValueError(f"{key} must be between {low} and {high} (got {value!r})")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


# Settings where None (JSON null) means "let the model decide".
_OPTIONAL_BOOLS = {"fim"}


def _coerce(key: str, name: str, value: Any, current: Any) -> Any:
    if name in _OPTIONAL_BOOLS:
        if value is None or isinstance(value, bool):
            return value
    elif isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():      # (inf and NaN are not)
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(current, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    kind = ("true, false or null" if name in _OPTIONAL_BOOLS else "true or false" if isinstance(current, bool)
            else "a whole number" if isinstance(current, int) else "a finite number" if isinstance(current, float)
            else "a list of strings")
    raise ValueError(f"{key} must be {kind} (got {value!r})")
