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
        if all(type(x) is float or type(x) is int for x in v):  # samples: the bulk of the file
            return [x if math.isfinite(x) else None for x in v]
        return [_clean(x) for x in v]
    return v


def render(results: Sequence[StageResult], meta: Mapping[str, Any]) -> str:
    doc = {
        "format": FORMAT,
        "schema": SCHEMA,
        "meta": dict(meta),
        "results": [result_dict(r) for r in results],
    }
    # One line per result (not indent=): json's C encoder only runs without indent, 5x faster
    # at 2,000 stages, and `python -m json.tool` pretty-prints it for a person.
    head = json.dumps({k: _clean(v) for k, v in doc.items() if k != "results"}, sort_keys=True, allow_nan=False, default=str)
    rows = [json.dumps(_clean(r), sort_keys=True, allow_nan=False, default=str) for r in doc["results"]]
    return head[:-1] + ', "results": [\n' + ",\n".join(rows) + "\n]}\n"


def is_report(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == FORMAT
