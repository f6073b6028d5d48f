"""Each token's bytes, and the ids decoding never generates: the table the decode loop
(`codeparrot_ls.engine.decoding.Decoder` builds and keeps it) reads for stop strings, token
healing and banned ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character; map it back to the byte.

    Printable Latin-1 bytes stand for themselves; the others (controls, space,
    0x7f-0xa0, 0xad) are spelled with the characters from U+0100 upwards in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shift)
            shift += 1
    return {c: b for b, c in chars.items()}


class TokenTable:
    """Each token's bytes and the ids that may never be generated, computed once per model."""

    def __init__(self, tokenizer, vocab_rows: int, eos_id: int, special_ids: Sequence[int]):
        alphabet = _byte_level_alphabet()
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        specials = set(special_ids) | {eos_id}
        self.pieces: list[bytes] = []
        self.first_byte = np.full(vocab_rows, -1, np.int16)
        for i in range(min(n, vocab_rows)):
            tok = tokenizer.id_to_token(i)
            if i in specials or tok is None:
                piece = b""
            else:
                try:
                    piece = bytes(alphabet[c] for c in tok)
                except KeyError:  # not a byte-level vocabulary: fall back to the decoder
                    piece = tokenizer.decode([i], skip_special_tokens=False).encode("utf-8")
            self.pieces.append(piece)
            if piece:
                self.first_byte[i] = piece[0]
        self.pieces += [b""] * (vocab_rows - len(self.pieces))
        banned = np.zeros(vocab_rows, bool)
        banned[n:] = True
        banned[[i for i in specials if i != eos_id and i < vocab_rows]] = True
        self.bias = np.where(banned, -np.inf, 0.0).astype(np.float32)
        self._prefix_masks: dict[bytes, np.ndarray] = {}

    def prefix_mask(self, remaining: bytes) -> np.ndarray:
        """Additive mask allowing only tokens whose bytes agree with `remaining` (token healing)."""
        mask = self._prefix_masks.get(remaining)
        if mask is None:
            mask = np.full(len(self.pieces), -np.inf, np.float32)
            for i in np.flatnonzero(self.first_byte == remaining[0]):
                piece = self.pieces[i]
                if piece.startswith(remaining) or remaining.startswith(piece):
                    mask[i] = 0.0
            if len(self._prefix_masks) > 256:
                self._prefix_masks.clear()
            self._prefix_masks[remaining] = mask
        return mask

