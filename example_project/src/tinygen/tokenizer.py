"""A byte-level tokenizer: every UTF-8 byte is a token, plus begin/end/padding tokens."""
from __future__ import annotations

from typing import Iterable, List


class ByteTokenizer:
    """Token ids 0-255 are bytes; 256, 257 and 258 are ``<bos>``, ``<eos>`` and ``<pad>``."""

    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the byte tokens; special tokens are dropped, broken UTF-8 is replaced."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def batch(self, texts: List[str]):
        """Left-padded ``(input_ids, attention_mask)`` tensors for a batch of prompts."""
        import torch

        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids, mask
