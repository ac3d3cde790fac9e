"""A small GPT written for the counter tests, with switches that plant changes.

Written from scratch for these tests (pre-norm blocks, learned positions, a KV cache, a
sampler). Each switch of :class:`Plant` is either a regression the counters must catch (the
work changes) or a refactor they must let pass (the work stays the same):

caught: ``manual_attention`` (q @ k.T, mask, softmax, @ v instead of SDPA), ``logits_fp64``
(an fp64 upcast of the logits), ``mlp_twice`` (the MLP computed twice, one result thrown away),
``sampler_extra`` (the sampler sorts and normalises the whole distribution for nothing);
pass: ``unsqueeze_roundtrip``, ``reshape_contiguous``, ``renamed`` (other attribute names),
``reordered`` (independent projections computed in another order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Plant:
    manual_attention: bool = False
    logits_fp64: bool = False
    mlp_twice: bool = False
    sampler_extra: bool = False
    unsqueeze_roundtrip: bool = False
    reshape_contiguous: bool = False
    renamed: bool = False
    reordered: bool = False


REGRESSIONS = ("manual_attention", "logits_fp64", "mlp_twice", "sampler_extra")
REFACTORS = ("unsqueeze_roundtrip", "reshape_contiguous", "renamed", "reordered")
assert set(REGRESSIONS + REFACTORS) == {f.name for f in fields(Plant)}


@dataclass(frozen=True)
class Shape:
    vocab: int = 96
    width: int = 32
    heads: int = 4
    layers: int = 2
    context: int = 64


class SelfAttention(nn.Module):
    def __init__(self, s: Shape, plant: Plant) -> None:
        super().__init__()
        self.plant, self.heads = plant, s.heads
        # the same parameters under other names when renamed
        names = ("wq", "wk", "wv", "wo") if plant.renamed else ("query", "key", "value", "out")
        self.names = names
        for n in names:
            setattr(self, n, nn.Linear(s.width, s.width))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
        nq, nk, nv, no = (getattr(self, n) for n in self.names)
        if self.plant.reordered:
            v = self._split(nv(x))
            k = self._split(nk(x))
            q = self._split(nq(x))
        else:
            q = self._split(nq(x))
            k = self._split(nk(x))
            v = self._split(nv(x))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        tq, tk = q.shape[2], k.shape[2]
        if self.plant.manual_attention:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if tq > 1:
                mask = torch.ones(tq, tk, dtype=torch.bool, device=x.device).tril(tk - tq)
                scores = scores.masked_fill(~mask, float("-inf"))
            y = scores.softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1)
        b, h, t, d = y.shape
        return no(y.transpose(1, 2).contiguous().view(b, t, h * d))


class MLP(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.up = nn.Linear(s.width, 4 * s.width)
        self.down = nn.Linear(4 * s.width, s.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, s: Shape, plant: Plant) -> None:
        super().__init__()
        self.plant = plant
        self.ln1, self.ln2 = nn.LayerNorm(s.width), nn.LayerNorm(s.width)
        self.attn, self.mlp = SelfAttention(s, plant), MLP(s)

    def forward(self, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        h = self.ln2(x)
        if self.plant.mlp_twice:
            self.mlp(h)  # the planted waste: computed and thrown away
        if self.plant.reshape_contiguous:
            b, t, c = h.shape
            h = h.reshape(b * t, c).reshape(b, t, c)
        return x + self.mlp(h)


class TinyGPT(nn.Module):
    def __init__(self, shape: Shape = Shape(), plant: Plant = Plant(), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.shape, self.plant = shape, plant
        self.tokens = nn.Embedding(shape.vocab, shape.width)
        self.positions = nn.Embedding(shape.context, shape.width)
        self.blocks = nn.ModuleList(Block(shape, plant) for _ in range(shape.layers))
        self.ln = nn.LayerNorm(shape.width)
        self.head = nn.Linear(shape.width, shape.vocab, bias=False)

    def forward(self, ids: torch.Tensor, caches: list | None = None, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        if self.plant.unsqueeze_roundtrip:
            pos = pos.unsqueeze(0).squeeze(0)
        x = self.tokens(ids) + self.positions(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        logits = self.head(self.ln(x))
        if self.plant.logits_fp64:
            logits = logits.double()
        return logits

    def sample(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The next token of each row from the last position's logits (temperature 0.8)."""
        probs = (logits[:, -1, :] / 0.8).softmax(dim=-1)
        if self.plant.sampler_extra:
            # the planted waste: a top-p pass whose result is not used
            sorted_probs, _ = probs.sort(dim=-1, descending=True)
            sorted_probs.cumsum(dim=-1)
        return torch.multinomial(probs, 1, generator=generator)

    def generate(self, ids: torch.Tensor, n_new: int, tick=lambda: None, seed: int = 0) -> torch.Tensor:
        """Prefill, then ``n_new - 1`` decode steps with a KV cache; ``tick()`` after each token."""
        g = torch.Generator().manual_seed(seed)
        caches: list = [{} for _ in self.blocks]
        logits = self(ids, caches)
        nxt = self.sample(logits, g)
        out = [nxt]
        tick()
        for i in range(n_new - 1):
            logits = self(nxt, caches, start=ids.shape[1] + i)
            nxt = self.sample(logits, g)
            out.append(nxt)
            tick()
        return torch.cat(out, dim=1)
