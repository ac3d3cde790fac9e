"""Token metrics from a generation's marks: TTFT, per-token decode latency, end-to-end, tokens/s.

Pure: marks in (nanoseconds from the start of each call, one mark per generated token),
numbers out. With marks ``t_1 .. t_N`` of one call (``t_i``: token *i*'s logits are ready),
its end ``t_end``, ``B`` prompts in the batch and ``R`` sequences returned per prompt:

- TTFT (prefill)  = t_1                        (start of the call to the first token's logits)
- gap (ITL) i     = t_{i+1} - t_i, i = 1..N-1  (one decode step: each token's time)
- TPOT            = (t_N - t_1) / (N - 1)      (the mean gap)
- end-to-end      = t_end
- tokens/s        = B * R * N / end-to-end    (every returned sequence's tokens)

``R`` is ``num_return_sequences`` (sampling, or beam search returning several beams). Beam
search with ``K`` beams extends ``B * K`` hypotheses a step and returns ``B * R`` of them
(``R <= K``); tokens/s counts the returned ones, and ``beams`` says how many were searched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..measure.steps import Marks

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class TokenCall:
    """One generation call's token timeline (nanoseconds)."""

    ttft_ns: float
    gaps_ns: tuple
    e2e_ns: float

    @property
    def n_tokens(self) -> int:
        return len(self.gaps_ns) + 1

    @property
    def tpot_ns(self) -> float | None:
        """(t_last - t_first) / (N - 1); None for a single token."""
        if not self.gaps_ns:
            return None
        return sum(self.gaps_ns) / len(self.gaps_ns)


def token_call(m: Marks) -> TokenCall:
    if m.n < 1:
        raise ValueError("a generation call produced no token marks")
    t = m.marks_ns
    return TokenCall(float(t[0]), tuple(float(b - a) for a, b in zip(t, t[1:])), float(m.end_ns))


def _pct(x: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without importing numpy."""
    s = sorted(x)
    if not s:
        raise ValueError("no samples")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class TokenStats:
    """Summary of the measured calls, in milliseconds (per token where it says so)."""

    n_tokens: int
    batch: int
    calls: int
    ttft_ms: float  # median over calls
    tpot_ms: float | None  # median over calls of (t_N - t_1) / (N - 1)
    itl_ms: dict  # percentile -> per-token gap, pooled over calls
    e2e_ms: float  # median over calls
    tokens_per_s: float  # B * R * N / median end-to-end
    return_sequences: int = 1  # R: sequences returned per prompt (num_return_sequences)
    beams: int = 1  # K: beam search's hypotheses per prompt (1: no beam search)

    @property
    def sequences(self) -> int:
        """Sequences one call returns: batch x return sequences."""
        return self.batch * self.return_sequences

    def shape(self) -> str:
        """What one call generates, in words: "batch 1", or e.g. "batch 1 x 2 return sequences, 4 beams"."""
        out = f"batch {self.batch}"
        if self.return_sequences != 1:
            out += f" x {self.return_sequences} return sequences"
        if self.beams != 1:
            out += f", {self.beams} beams"
        return out

    def table(self) -> str:
        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4g} ms"

        itl = ", ".join(f"p{q} {ms(v)}" for q, v in self.itl_ms.items()) or "n/a (one token)"
        return (
            f"{self.calls} call(s) x {self.n_tokens} token(s), {self.shape()}: "
            f"TTFT {ms(self.ttft_ms)}, TPOT {ms(self.tpot_ms)}, per-token {itl}, "
            f"end-to-end {ms(self.e2e_ms)}, {self.tokens_per_s:.4g} tokens/s"
        )


def token_stats(calls: Sequence[TokenCall], batch: int = 1, return_sequences: int = 1, beams: int = 1) -> TokenStats:
    """Medians over ``calls``; tokens/s over all ``batch * return_sequences`` returned sequences."""
    if not calls:
        raise ValueError("no calls to summarize")
    n = calls[0].n_tokens
    if any(c.n_tokens != n for c in calls):
        raise ValueError("calls generated different numbers of tokens; pin the output length")
    gaps = [g for c in calls for g in c.gaps_ns]
    tpots = [c.tpot_ns for c in calls if c.tpot_ns is not None]
    e2e = _pct([c.e2e_ns for c in calls], 50)
    return TokenStats(
        n_tokens=n,
        batch=batch,
        calls=len(calls),
        ttft_ms=_pct([c.ttft_ns for c in calls], 50) / 1e6,
        tpot_ms=_pct(tpots, 50) / 1e6 if tpots else None,
        itl_ms={q: _pct(gaps, q) / 1e6 for q in PERCENTILES} if gaps else {},
        e2e_ms=e2e / 1e6,
        tokens_per_s=batch * return_sequences * n / (e2e / 1e9) if e2e > 0 else float("inf"),
        return_sequences=return_sequences,
        beams=beams,
    )


def by_position(calls: Sequence[TokenCall], first_position: int = 0) -> tuple[list[int], list[list[float]]]:
    """Per-token gaps grouped by the position of the token they produce (for a scaling fit).

    Gap i produces token i+1, which attends to ``first_position + i`` earlier positions.
    """
    if not calls or not calls[0].gaps_ns:
        return [], []
    k = len(calls[0].gaps_ns)
    positions = [first_position + i + 1 for i in range(k)]
    return positions, [[c.gaps_ns[i] for c in calls] for i in range(k)]
