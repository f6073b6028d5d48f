"""User-facing completion settings, read from `initializationOptions` and
`workspace/didChangeConfiguration` (camelCase keys in LSP, snake_case here)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from codeparrot_ls.engine.lookup import DEFAULT_DRAFT_TOKENS


# More draft tokens per pass cost more than right guesses save (a pass of 5 tokens costs ~1.5x one).
MAX_LOOKUP_TOKENS = 16


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
    workspace_context: bool = True    # definitions of imported names and windows from the workspace index
    workspace_share: float = 0.3      # share of the prompt budget the workspace context may take
    workspace_max_files: int = 10_000           # the index stops at this many files ...
    workspace_max_bytes: int = 64_000_000       # ... or at this many bytes of source
    workspace_max_file_bytes: int = 1_000_000   # bigger files are skipped

    def updated(self, options: dict[str, Any] | None) -> "CompletionSettings":
        """A copy with the known keys of `options` applied (camelCase or snake_case).

        Unknown keys are ignored; a value of the wrong type raises ValueError with the
        key's name, so a bad configuration is reported instead of half-applied.
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
            changes[name] = _coerce(name, value, current)
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("maxNewTokens must be >= 1")
        if self.context_tokens < 16:
            raise ValueError("contextTokens must be >= 16")
        if not 0.0 <= self.suffix_share <= 0.9:
            raise ValueError("suffixShare must be between 0 and 0.9")
        if self.num_candidates < 1:
            raise ValueError("numCandidates must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("topP must be in (0, 1]")
        if self.time_budget_ms < 1:
            raise ValueError("timeBudgetMs must be >= 1")
        if self.min_chars < 0:
            raise ValueError("minChars must be >= 0")
        if not 0.0 <= self.workspace_share <= 0.75:
            raise ValueError("workspaceShare must be between 0 and 0.75")
        for name in ("workspace_max_files", "workspace_max_bytes", "workspace_max_file_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_camel(name)} must be >= 1")
        if not 0 <= self.lookup_tokens <= MAX_LOOKUP_TOKENS:
            raise ValueError(f"lookupTokens must be between 0 and {MAX_LOOKUP_TOKENS}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


# Settings where None (JSON null) means "let the model decide".
_OPTIONAL_BOOLS = {"fim"}


def _coerce(name: str, value: Any, current: Any) -> Any:
    if name in _OPTIONAL_BOOLS:
        if value is None or isinstance(value, bool):
            return value
    elif isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ValueError(f"setting {name!r}: invalid value {value!r}")
