"""What one stage of one test came to: the record that reports, JUnit and the CLI read."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .baseline import Entry
from .verdict import Verdict

#: kinds of rows: a timed stage, a test's cycle total, a stage's first (cold) call
STAGE, CYCLE, COLD = "stage", "cycle", "cold"


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
    samples_ms: tuple = ()
    env: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    updated: bool = False

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    @property
    def label(self) -> str:
        if self.kind == COLD:
            return f"{self.stage} (cold)"
        if self.kind == CYCLE:
            return f"cycle {self.stage}"
        return self.stage

    def to_dict(self) -> dict[str, Any]:
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
            "samples_ms": list(self.samples_ms),
            "env": dict(self.env),
            "counters": dict(self.counters),
            "updated": self.updated,
            "verdict": asdict(self.verdict),
        }
        d["verdict"]["change"] = self.verdict.change
        return d
