"""The JSON report: every row of a run with its samples and its baseline, for tools and the CLI.

Layout (``schema`` 2)::

    {"format": "pytest-llmcycle-report", "schema": 2,
     "meta": {<run: created, commit, dirty, device_key, threads, versions, settings, ...>},
     "results": [<StageResult.to_dict() + "label" + "baseline": <stored entry or null>>, ...]}

Two scales in each row's ``verdict``, each named for itself:

* fractions of the baseline: ``change`` (``0.164`` = 16.4 % slower, ``-0.2`` = 20 % faster) and
  ``change_ci`` (the 95 % bootstrap interval of ``change``, ``[lo, hi]``), like ``threshold``
  and ``effective_threshold``;
* ratios, current over baseline: ``ratio`` (``1 + change``) and ``ratio_ci`` (``1 + change_ci``),
  like ``first_ratio`` and ``machine_factor``.

An interval is null where the verdict needed none (a stage clearly within its threshold).
Schema 1 wrote ``ci``, the interval of the *ratio*, next to ``change``, a *fraction*; schema 2
names it ``ratio_ci`` and adds ``change_ci``, and ``meta`` has ``dirty`` (see
``outputs.run_meta``). Readers take a row's samples and ``verdict.threshold``, the same in both
schemas, so ``llmcycle compare`` reads either.

Rendering only: no timing, no pytest. ``llmcycle compare`` reads these files back.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from ..storage.baseline import entries_to_json
from ..run.results import StageResult

FORMAT = "pytest-llmcycle-report"
SCHEMA = 2


def _clean(v: Any) -> Any:
    """NaN/inf become null (strict JSON parsers reject them); tuples become lists. Only a row
    that holds a non-finite number comes here (see :func:`_line`)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def result_dicts(results: Sequence[StageResult]) -> list[dict[str, Any]]:
    """The report's rows: each record, its label and its whole stored baseline entry (all
    baselines' samples rounded in one batch)."""
    stored = iter(entries_to_json([r.baseline for r in results if r.baseline is not None]))
    out = []
    for r in results:
        d = r.to_dict()
        d["label"] = r.label
        d["baseline"] = next(stored) if r.baseline is not None else None
        d["verdict"] = _verdict_scales(d["verdict"])
        out.append(d)
    return out


def _verdict_scales(v: dict[str, Any]) -> dict[str, Any]:
    """The verdict with its interval on both scales (see the module docstring): the record's
    ``ci`` (an interval of the ratio) as ``ratio_ci``, and ``change_ci``, a fraction like ``change``."""
    v = dict(v)
    ci = v.pop("ci", None)
    v["ratio_ci"] = None if ci is None else [ci[0], ci[1]]
    v["change_ci"] = None if ci is None else [ci[0] - 1.0, ci[1] - 1.0]
    return v


def render(results: Sequence[StageResult], meta: Mapping[str, Any]) -> str:
    doc = {
        "format": FORMAT,
        "schema": SCHEMA,
        "meta": dict(meta),
        "results": result_dicts(results),
    }
    # One line per result (not indent=): json's C encoder only runs without indent, 5x faster
    # at 2,000 stages, and `python -m json.tool` pretty-prints it for a person.
    head = _line({k: v for k, v in doc.items() if k != "results"})
    rows = [_line(r) for r in doc["results"]]
    return head[:-1] + ', "results": [\n' + ",\n".join(rows) + "\n]}\n"


def _line(d: Mapping[str, Any]) -> str:
    """One object as one line of strict JSON. Nearly every row is finite and goes straight to
    the C encoder; one holding a NaN or an infinity is refused there and cleaned first."""
    try:
        return json.dumps(d, sort_keys=True, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_clean(d), sort_keys=True, allow_nan=False, default=str)


def is_report(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == FORMAT
