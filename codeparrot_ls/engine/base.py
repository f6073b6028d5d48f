"""The one interface every inference engine implements.

An engine owns a model and its tokenizer and knows how to run one forward pass
with a KV cache and how to cut and pick rows of a past; nothing more. Decoding (greedy /
sampling, stop rules, budgets, cancellation, KV prefix reuse) is written once on top of
`forward` (`codeparrot_ls.engine.decoding.Decoder`), so the ONNX and the torch engines
behave the same, and evaluation measures exactly what the server serves.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codeparrot_ls.engine.lookup import DEFAULT_DRAFT_TOKENS


def prefill_ends(length: int, chunk: int) -> list[int]:
    """Where the prefill passes of `length` new tokens end, in chunks of `chunk` (0: one pass).
    A tail shorter than a quarter chunk joins the chunk before it: a pass costs about a
    millisecond of weight reads and per-node work whatever its length (786 tokens on the
    1,024-position `mid`: 256 + 256 + 274 in 36.5 ms, 256 x 3 + 18 in 37.5)."""
    if not chunk or length <= chunk:
        return [length]
    ends = list(range(chunk, length, chunk))
    if length - ends[-1] < chunk // 4:
        ends.pop()
    return [*ends, length]


@dataclass
class ModelInfo:
    """What the server and the evaluator need to know about a model."""

    name: str
    engine: str                  # "onnx" or "torch"
    vocab_size: int              # rows of the logits (may exceed the tokenizer's vocab: padding)
    n_positions: int             # longest sequence the model accepts (prompt + new tokens)
    n_layer: int
    eos_id: int
    special_ids: dict[str, int]  # special token -> id (from codeparrot_ls.prompt)
    supports_fim: bool
    path: str = ""
    # Prompt with FIM unless the user says otherwise: export.json's "serving": {"fim": ...},
    # written from a line-completion comparison (FIM can score below left-to-right for a weak model).
    fim_default: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int = 48
    temperature: float = 0.0             # 0 = greedy
    top_p: float = 1.0
    num_samples: int = 1                 # > 1 only with temperature > 0
    seed: int | None = None
    stop: Sequence[str] = ()             # stop strings on the generated text (excluded from it; must end after required_prefix)
    deadline: float | None = None        # time.monotonic() after which decoding stops
    is_cancelled: Callable[[], bool] | None = None   # checked before every token and between prefill chunks
    required_prefix: str = ""            # token healing: the generated text must start with this
    # Early stop: called with the text generated so far (required_prefix included) when a
    # token ends a line or starts the first visible character of a new line; returns how
    # many characters to keep once nothing after them can matter (finish_reason "stop"),
    # or None to go on decoding.
    stop_when: Callable[[str], int | None] | None = None
    # Greedy decoding guesses up to this many next tokens by finding the last tokens earlier in
    # the prompt or output, and checks the guess in one pass (0 = one token per pass). The
    # model's own greedy choice decides every token: the same text in fp32; an int8 graph
    # shares one activation scale across a pass, so a near-tie may break the other way.
    lookup_tokens: int = DEFAULT_DRAFT_TOKENS


@dataclass
class Generation:
    text: str                            # generated text (required_prefix included); a stop string is cut off
    token_ids: list[int]
    finish_reason: str                   # "eos" | "stop" | "length" | "time" | "cancelled" | "context"
    prompt_tokens: int = 0               # prompt tokens the model saw (after any left truncation)
    reused_tokens: int = 0               # prompt tokens served from the KV cache of an earlier call
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    truncated_tokens: int = 0            # prompt tokens dropped on the left to fit n_positions


class Engine(abc.ABC):
    info: ModelInfo

    @property
    @abc.abstractmethod
    def tokenizer(self):
        """A `tokenizers.Tokenizer` (the model's real one)."""

    @abc.abstractmethod
    def forward(self, input_ids: np.ndarray, past: Any | None, logits_to_keep: int = 1,
                attention_mask: np.ndarray | None = None,
                position_ids: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """Run the model on `input_ids` [batch, seq] after `past` (None = empty cache).

        Returns (logits [batch, min(logits_to_keep, seq), vocab] as float32 numpy, new past).
        `attention_mask` [batch, past + seq] and `position_ids` [batch, seq] default to
        all ones and consecutive positions; pass them for left-padded batches.
        The past object is opaque to callers (each engine keeps its own format). `past`
        itself stays valid after the call, but an engine may write the new positions
        into storage it shares with longer pasts (the ONNX engine's KV buffer): after
        `forward(x, truncate_past(p, n))`, `p` must not be used again.
        """

    @abc.abstractmethod
    def past_length(self, past: Any | None) -> int:
        """Number of positions held in `past` (0 for None)."""

    @abc.abstractmethod
    def truncate_past(self, past: Any, length: int) -> Any:
        """The first `length` positions of `past` (KV prefix reuse)."""

    @abc.abstractmethod
    def select_past(self, past: Any, rows: Sequence[int]) -> Any:
        """Rows of `past` along the batch axis (repeat a row to expand one prompt into samples)."""

    def close(self) -> None:
        """Release the model (threads, sessions)."""
