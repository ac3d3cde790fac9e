"""Greedy generation, split into the two phases an LLM server spends its time in:

* ``prefill``: one forward pass over the prompt, filling the KV cache;
* ``decode_step``: one token at a time, each reusing the cache (or, with ``use_cache=False``,
  recomputing the whole sequence: the slow path the KV cache exists to avoid).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, List, Optional

from .tokenizer import ByteTokenizer


def _cache_arg(model) -> str:
    """transformers 5.x calls the KV-cache argument ``cache``; 4.x called it ``past_key_values``."""
    return _cache_arg_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_arg_of(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def prefill(model, input_ids, use_cache: bool = True):
    """Logits of the last prompt position and the filled cache (None without cache)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, use_cache=use_cache)
    return out.logits[:, -1, :], (_cache_of(out) if use_cache else None)


def decode_step(model, next_ids, past, seq_ids=None):
    """One new token: with a cache, feed only ``next_ids``; without, the whole ``seq_ids``."""
    import torch

    with torch.inference_mode():
        if past is not None:
            out = model(input_ids=next_ids, use_cache=True, **{_cache_arg(model): past})
            return out.logits[:, -1, :], _cache_of(out)
        out = model(input_ids=seq_ids, use_cache=False)
        return out.logits[:, -1, :], None


def greedy_tokens(model, input_ids, max_new_tokens: int = 16, use_cache: bool = True,
                  eos_id: Optional[int] = None, on_token: Optional[Callable[[], None]] = None) -> List[int]:
    """The greedily generated token ids (stops early at ``eos_id``).

    ``on_token()`` is called as soon as each token's logits exist (before it is picked): a
    hook for streaming, and what a latency test uses to mark each token.
    """
    import torch

    logits, past = prefill(model, input_ids, use_cache)
    seq = input_ids
    out: List[int] = []
    for _ in range(max_new_tokens):
        if on_token is not None:
            on_token()
        nxt = logits.argmax(dim=-1, keepdim=True)
        token = int(nxt[0, 0])
        out.append(token)
        if eos_id is not None and token == eos_id:
            break
        seq = torch.cat([seq, nxt], dim=1)
        logits, past = decode_step(model, nxt, past, seq)
    return out


def generate(model, tokenizer: ByteTokenizer, prompt: str, max_new_tokens: int = 16, use_cache: bool = True) -> str:
    """Greedy continuation of ``prompt`` as text."""
    import torch

    ids = torch.tensor([tokenizer.encode(prompt)])
    return tokenizer.decode(greedy_tokens(model, ids, max_new_tokens, use_cache, tokenizer.eos_id))
