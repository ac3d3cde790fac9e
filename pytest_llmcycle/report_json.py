"""The JSON report: every row of a run with its samples and its baseline, for tools and the CLI.

Layout (``schema`` 1)::

    {"format": "pytest-llmcycle-report", "schema": 1,
     "meta": {<run: device_key, threads, versions, settings, ...>},
     "results": [<StageResult.to_dict() + "label" + "baseline": <stored entry or null>>, ...]}

Rendering only: no timing, no pytest. ``llmcycle compare`` reads these files back.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from .results import StageResult

FORMAT = "pytest-llmcycle-report"
SCHEMA = 1


def result_dict(r: StageResult) -> dict[str, Any]:
    d = r.to_dict()
    d["label"] = r.label
    d["baseline"] = r.baseline.to_json() if r.baseline is not None else None
    return d


def _clean(v: Any) -> Any:
    """NaN/inf become null (strict JSON parsers reject them); tuples become lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def render(results: Sequence[StageResult], meta: Mapping[str, Any]) -> str:
    doc = {
        "format": FORMAT,
        "schema": SCHEMA,
        "meta": dict(meta),
        "results": [result_dict(r) for r in results],
    }
    return json.dumps(_clean(doc), indent=1, sort_keys=True, allow_nan=False, default=str) + "\n"


def is_report(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == FORMAT
