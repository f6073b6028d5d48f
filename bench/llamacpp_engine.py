"""llama.cpp (through llama-cpp-python's C API bindings) on a GGUF file, fed token ids.

`LlamaCpp` is one llama.cpp context holding one sequence: `run(ids, keep)` decodes `ids` after
what the cache holds and returns the logits of the last `keep` of them; `truncate(n)` drops
every cached position from `n` on (what llama-server does to reuse a common prompt prefix).
Settings are llama-server's defaults where they matter: a batch of up to 2,048 tokens split
into micro-batches of 512, an f16 KV cache; flash attention on. Weight repacking into the CPU's
extra buffer types is off by default (llama-server's `--no-repack`): on this Xeon it routes Q8_0
matrix products to the AMX kernel, which crashed (a segfault in `ggml_backend_amx_mul_mat`,
llama.cpp as vendored by llama-cpp-python 0.3.36) on every pass of more than one token.

`LlamaCppEngine` puts it behind the project's `Engine` interface (one row at a time), so the
evaluation's decode loop, prompt builder and scoring run on llama.cpp unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codeparrot_ls.engine.base import Engine
from codeparrot_ls.engine.loading import load_tokenizer, model_info

N_BATCH, N_UBATCH = 2048, 512     # llama-server's defaults


_log_sink = None


def _silence(L) -> None:
    """llama.cpp's log (model loading, every context) off; the callback must stay alive."""
    global _log_sink
    if _log_sink is None:
        _log_sink = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(_log_sink, None)


class LlamaCppError(RuntimeError):
    """llama.cpp refused a model, a context or a batch."""


class LlamaCpp:
    def __init__(self, gguf: str | Path, threads: int, n_ctx: int, flash_attn: bool = True, repack: bool = False):
        import llama_cpp as L

        self.L = L
        _silence(L)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = repack
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise LlamaCppError(f"llama.cpp cannot load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, min(N_BATCH, n_ctx), min(N_UBATCH, n_ctx), 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise LlamaCppError(f"llama.cpp cannot make a context of {n_ctx} positions for {gguf}")
        self.n_ctx, self.n_batch = n_ctx, cp.n_batch
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        # numpy views of the batch's arrays: filling them costs nothing next to a decode
        self._token = np.ctypeslib.as_array(self.batch.token, (self.n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, (self.n_batch,))
        self._logits_flag = np.ctypeslib.as_array(self.batch.logits, (self.n_batch,))
        np.ctypeslib.as_array(self.batch.n_seq_id, (self.n_batch,))[:] = 1
        for i in range(self.n_batch):
            self.batch.seq_id[i][0] = 0
        self.length = 0                  # positions in the cache

    def run(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        """Decode `ids` after the cache; logits [keep, vocab] of the last `keep` tokens (float32 copies)."""
        if self.length + len(ids) > self.n_ctx:
            raise LlamaCppError(f"{self.length + len(ids)} positions do not fit the context's {self.n_ctx}")
        out = []
        for start in range(0, len(ids), self.n_batch):
            piece = ids[start:start + self.n_batch]
            n, first_kept = len(piece), len(ids) - keep - start
            self._token[:n] = piece
            self._pos[:n] = np.arange(self.length, self.length + n)
            self._logits_flag[:n] = 0
            self._logits_flag[max(first_kept, 0):n] = 1
            self.batch.n_tokens = n
            rc = self.L.llama_decode(self.ctx, self.batch)
            if rc != 0:
                raise LlamaCppError(f"llama_decode returned {rc}")
            self.length += n
            for i in range(max(first_kept, 0), n):
                row = self.L.llama_get_logits_ith(self.ctx, i)
                out.append(np.ctypeslib.as_array(row, (self.n_vocab,)).copy())
        return np.stack(out) if out else np.zeros((0, self.n_vocab), np.float32)

    def truncate(self, length: int) -> None:
        if length < self.length:
            self.L.llama_memory_seq_rm(self.memory, 0, length, -1)
            self.length = length

    def close(self) -> None:
        if self.ctx:
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.L.llama_model_free(self.model)
            self.ctx = self.model = None


class LlamaCppEngine(Engine):
    """The Engine interface over `LlamaCpp`: a past is the number of positions it covers (the
    context holds one sequence; a past shorter than the cache truncates it first)."""

    def __init__(self, gguf: str | Path, model_dir: str | Path, threads: int):
        model_dir = Path(model_dir)
        self._tokenizer = load_tokenizer(model_dir)
        self.info = model_info(model_dir, "llama.cpp", self._tokenizer, file=Path(gguf).name, threads=threads)
        self.llm = LlamaCpp(gguf, threads, self.info.n_positions)
        if self.llm.n_vocab != self.info.vocab_size:
            raise LlamaCppError(f"{gguf} has {self.llm.n_vocab} tokens, {model_dir} {self.info.vocab_size}")

    @property
    def tokenizer(self):
        return self._tokenizer

    def forward(self, input_ids, past, logits_to_keep=1, attention_mask=None, position_ids=None):
        if input_ids.shape[0] != 1 or (attention_mask is not None and not attention_mask.all()):
            raise ValueError("the llama.cpp engine runs one unpadded row at a time (batch_size 1)")
        start = self.past_length(past)
        if start > self.llm.length:
            raise ValueError(f"a past of {start} positions is gone (the cache holds {self.llm.length})")
        self.llm.truncate(start)
        logits = self.llm.run(input_ids[0].tolist(), min(logits_to_keep, input_ids.shape[1]))
        return logits[None], start + input_ids.shape[1]

    def past_length(self, past) -> int:
        return past or 0

    def truncate_past(self, past, length: int):
        return min(past, length)

    def select_past(self, past, rows: Sequence[int]):
        if any(r != 0 for r in rows) or len(rows) != 1:
            raise ValueError("the llama.cpp engine holds one sequence (num_samples 1)")
        return past

    def close(self) -> None:
        self.llm.close()

