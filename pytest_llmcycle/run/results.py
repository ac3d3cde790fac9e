"""What one stage of one test came to: the record that reports, JUnit and the CLI read."""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from ..storage.baseline import Entry
from ..engine.verdict import Verdict, slowdown_warning

#: kinds of rows: a timed stage, a test's cycle total, a stage's first (cold) call
STAGE, CYCLE, COLD = "stage", "cycle", "cold"


_VERDICT_FIELDS = tuple(f.name for f in fields(Verdict))


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    """``dataclasses.asdict(v)`` plus ``change``; a Verdict holds only flat values, so no deep copy."""
    d = {name: getattr(v, name) for name in _VERDICT_FIELDS}
    d["change"] = v.change
    return d


def _compact(xs: Any) -> Any:
    """Samples as 8-byte doubles: a tuple of Python floats takes 32 bytes a sample, and a run keeps
    every row's samples to the end (2,000 stages: about 1 MB instead of 4). An ``array('d')`` reads
    like the tuple (len, iteration, indexing, ``list()``, ``numpy.asarray`` without a copy); treat
    it as read-only. Anything that is not numbers stays a tuple, and so does an empty one."""
    if type(xs) is array:
        return xs
    if not xs:
        return ()  # the one shared empty tuple (cycle rows, timelines of stages that are not per token)
    try:
        return array("d", xs)
    except TypeError:
        return tuple(xs)


@dataclass(frozen=True)
class StageResult:
    nodeid: str
    stage: str
    device_key: str
    verdict: Verdict
    kind: str = STAGE
    unit: str = "call"
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    n: int = 0
    baseline: Entry | None = None
    cold_ms: float | None = None
    remeasure_median_ms: float | None = None
    spent_s: float = 0.0
    #: wall seconds timing this stage cost: its timed sections (cold call, calibration, warm-up,
    #: rounds, a re-measure, the machine check); with --llmcycle-against, every process's turns
    #: from the first to the base's records (None: not known, e.g. a second stage of one section)
    section_s: float | None = None
    #: this run's stored samples (thinned, sorted), as an ``array('d')`` (see :func:`_compact`)
    samples_ms: Sequence[float] = ()
    #: per-token stages: the median time of each token position, in generation order
    timeline_ms: Sequence[float] = ()
    env: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    updated: bool = False
    #: measured in a test whose body then raised: shown, never written as a baseline
    test_failed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples_ms", _compact(self.samples_ms))
        object.__setattr__(self, "timeline_ms", _compact(self.timeline_ms))

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    @property
    def warning(self) -> str:
        """Set when the median reads more than twice its baseline's (see ``verdict.WARN_RATIO``):
        such a row is never shown as a plain pass, whatever its verdict."""
        if self.kind == COLD or self.baseline is None or not self.median_ms or not self.baseline.median_ms:
            return ""
        return slowdown_warning(self.median_ms / self.baseline.median_ms, self.outcome)

    @property
    def label(self) -> str:
        if self.kind == COLD:
            return f"{self.stage} (cold)"
        if self.kind == CYCLE:
            return f"cycle {self.stage}"
        return self.stage

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """The record as plain data; ``samples=False`` writes ``samples_ms`` empty (a lean JSON
        report's cold rows, whose samples are their stage row's)."""
        d = {
            "nodeid": self.nodeid,
            "stage": self.stage,
            "kind": self.kind,
            "device_key": self.device_key,
            "unit": self.unit,
            "outcome": self.outcome,
            "median_ms": self.median_ms,
            "q1_ms": self.q1_ms,
            "q3_ms": self.q3_ms,
            "n": self.n,
            "baseline_median_ms": self.baseline.median_ms if self.baseline else None,
            "cold_ms": self.cold_ms,
            "remeasure_median_ms": self.remeasure_median_ms,
            "spent_s": self.spent_s,
            "section_s": self.section_s,
            "samples_ms": list(self.samples_ms) if samples else [],
            "timeline_ms": list(self.timeline_ms),
            "env": dict(self.env),
            "counters": dict(self.counters),
            "updated": self.updated,
            "test_failed": self.test_failed,
            "verdict": _verdict_dict(self.verdict),
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageResult":
        """The record back from :meth:`to_dict` (how xdist workers hand results to the controller).

        ``to_dict`` keeps only the baseline's median; when ``d["baseline"]`` holds the whole
        :class:`Entry` (its fields, as ``dataclasses.asdict`` gives them) that is used instead.
        Unknown keys are ignored, so a record with fields this version lacks still reads.
        """
        names = {f.name for f in fields(Verdict)}
        v = {k: x for k, x in d["verdict"].items() if k in names}
        if v.get("ci") is not None:
            v["ci"] = tuple(v["ci"])
        full = d.get("baseline")
        if isinstance(full, Mapping):
            names = {f.name for f in fields(Entry)}
            e = {k: x for k, x in full.items() if k in names}
            baseline: Entry | None = Entry(**{**e, "samples_ms": tuple(e.get("samples_ms", ()))})
        elif d.get("baseline_median_ms") is not None:
            m = d["baseline_median_ms"]
            baseline = Entry(m, m, m, 1, (m,))
        else:
            baseline = None
        own = {f.name for f in fields(cls)} - {"verdict", "baseline"}
        kw = {k: d[k] for k in own if k in d}
        for key in ("samples_ms", "timeline_ms"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(verdict=Verdict(**v), baseline=baseline, **kw)
