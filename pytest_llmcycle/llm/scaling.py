"""How a stage's cost grows with size: a power law fitted on a log-log scale, with an interval.

Pure numpy. For sizes ``n_k`` with median cost ``c_k`` the fit is ``log c = a + b log n``
(least squares); ``b`` is the scaling exponent: 0 flat, 1 linear, 2 quadratic. Its 95 %
interval comes from a bootstrap that resamples every size's samples and refits (seeded, so the
same samples always give the same interval). A size with one value (a deterministic counter)
contributes no noise, so a fit of counters alone has a zero-width interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..engine import stats


class ScalingError(AssertionError):
    """A fitted exponent outside the asserted bounds; the message shows the fit and its table."""


@dataclass(frozen=True)
class PowerFit:
    exponent: float
    lo: float
    hi: float
    intercept: float  # log of the cost at size 1
    sizes: tuple
    medians: tuple
    what: str = "time"
    unit: str = "ms"
    #: False in smoke mode (--llmcycle-disable): fitted to single cold calls, so check() asserts nothing
    timed: bool = True

    @property
    def local_exponents(self) -> tuple:
        """Slope between each pair of neighbouring sizes: where the growth changes."""
        out = []
        for (n0, c0), (n1, c1) in zip(zip(self.sizes, self.medians), zip(self.sizes[1:], self.medians[1:])):
            out.append(math.log(c1 / c0) / math.log(n1 / n0) if c0 > 0 and c1 > 0 else float("nan"))
        return tuple(out)

    def table(self) -> str:
        rows = [f"  {'size':>10}  {self.what + ' (' + self.unit + ')':>16}  local exponent"]
        local = (None,) + self.local_exponents
        for n, c, e in zip(self.sizes, self.medians, local):
            rows.append(f"  {n:>10g}  {c:>16.5g}  {'' if e is None else f'{e:.2f}'}")
        return "\n".join(rows)

    def describe(self) -> str:
        return (
            f"{self.what} ~ size^{self.exponent:.2f} (95% CI {self.lo:.2f} .. {self.hi:.2f}) "
            f"over sizes {', '.join(f'{n:g}' for n in self.sizes)}"
        )

    def check(self, at_most: float | None = None, at_least: float | None = None, label: str = "") -> None:
        """Fail when the exponent is *significantly* outside [at_least, at_most].

        A noisy fit whose interval still includes the bound passes: only growth that is
        surely worse (or surely better) than asserted fails.
        """
        if not self.timed:
            return
        problems = []
        if at_most is not None and self.lo > at_most:
            problems.append(f"grows faster than size^{at_most:g}: the whole 95% CI is above {at_most:g}")
        if at_least is not None and self.hi < at_least:
            problems.append(f"grows slower than size^{at_least:g}: the whole 95% CI is below {at_least:g}")
        if problems:
            head = f"llmcycle: scaling of {label or self.what}: " + "; ".join(problems)
            raise ScalingError(f"{head}\n  fit   {self.describe()}\n{self.table()}")


def fit_power_law(
    sizes: Sequence[float],
    samples: Sequence[Sequence[float]],
    *,
    what: str = "time",
    unit: str = "ms",
    confidence: float = 0.95,
    seed: int = 0,
    n_boot: int = stats.N_BOOTSTRAP,
) -> PowerFit:
    """Fit median(samples[k]) ~ sizes[k] ** b. Needs two or more distinct positive sizes."""
    if len(sizes) != len(samples):
        raise ValueError(f"{len(sizes)} sizes but {len(samples)} sample groups")
    if len(set(sizes)) < 2:
        raise ValueError("a scaling fit needs at least two different sizes")
    if any(n <= 0 for n in sizes):
        raise ValueError("sizes must be positive")
    groups = [np.asarray(s, dtype=float) for s in samples]
    if any(g.size == 0 for g in groups):
        raise ValueError("every size needs at least one sample")
    if any((g <= 0).any() for g in groups):
        raise ValueError("costs must be positive for a log-log fit")
    x = np.log(np.asarray(sizes, dtype=float))
    medians = np.array([float(np.median(g)) for g in groups])
    slope, intercept = _ols(x, np.log(medians)[None, :])
    rng = np.random.default_rng(seed)
    boot = np.stack(
        [stats.bootstrap_medians(g, rng, n_boot) if g.size > 1 else np.full(n_boot, g[0]) for g in groups], axis=1
    )
    slopes, _ = _ols(x, np.log(boot))
    alpha = 1 - confidence
    lo, hi = np.quantile(slopes, [alpha / 2, 1 - alpha / 2])
    b = _clean(float(slope[0]))
    return PowerFit(
        exponent=b,
        lo=_clean(min(float(lo), b)),
        hi=_clean(max(float(hi), b)),
        intercept=float(intercept[0]),
        sizes=tuple(float(n) for n in sizes),
        medians=tuple(float(m) for m in medians),
        what=what,
        unit=unit,
    )


def _clean(x: float) -> float:
    """Round off float noise (1e-16 for an exactly flat counter) so it reads 0.00, not -0.00."""
    return round(x, 12) + 0.0


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of each row of ``y`` against ``x``."""
    xc = x - x.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    return slope, y.mean(axis=1) - slope * x.mean()


@dataclass(frozen=True)
class ScalingResult:
    """A stage timed (and optionally counted) over several sizes."""

    stage: str
    sizes: tuple
    samples_ms: tuple  # one tuple of samples per size
    counters: tuple = ()  # one dict per size (empty without counters)
    stage_results: tuple = field(default=(), compare=False)  # recorded StageResults, when asked
    #: False in smoke mode (--llmcycle-disable): one untimed call per size, no counters; asserts nothing
    timed: bool = True

    def fit(self, metric: str = "time") -> PowerFit:
        """The power-law fit of time (median, with a bootstrap interval) or of a counter."""
        if metric == "time":
            f = fit_power_law(self.sizes, self.samples_ms, what=f"{self.stage} time", unit="ms")
            return f if self.timed else replace(f, timed=False)
        if not self.counters or any(metric not in c for c in self.counters):
            raise KeyError(f"counter {metric!r} was not taken for every size (counters: {sorted(self.counters[0]) if self.counters else []})")
        return fit_power_law(self.sizes, [[c[metric]] for c in self.counters], what=f"{self.stage} {metric}", unit="count")

    @property
    def exponent(self) -> float:
        return self.fit().exponent

    def assert_exponent(self, at_most: float | None = None, at_least: float | None = None, metric: str = "time") -> PowerFit:
        """Fail (with the fitted exponent and the table of sizes) when growth is outside the bounds.

        In smoke mode (``--llmcycle-disable``) nothing was measured: returns None, asserting nothing.
        """
        if not self.timed:
            return None  # type: ignore[return-value]
        f = self.fit(metric)
        f.check(at_most, at_least, label=f"{self.stage} ({metric})")
        return f

    def assert_flat(self, tolerance: float = 0.1, metric: str = "time") -> PowerFit:
        """Cost does not grow with size: the exponent is not significantly above ``tolerance``."""
        return self.assert_exponent(at_most=tolerance, metric=metric)
