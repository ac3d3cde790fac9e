"""The JSON report: every row of a run with its samples and its baseline, for tools and the CLI.

Layout (``schema`` 3)::

    {"format": "pytest-llmcycle-report", "schema": 3, "samples": "lean" | "all",
     "meta": {<run: created, commit, dirty, device_key, threads, versions, settings, ...>},
     "results": [<StageResult.to_dict() + "label" + "baseline": <stored entry or null>>, ...]}

Two scales in each row's ``verdict``, each named for itself:

* fractions of the baseline: ``change`` (``0.164`` = 16.4 % slower, ``-0.2`` = 20 % faster) and
  ``change_ci`` (the 95 % bootstrap interval of ``change``, ``[lo, hi]``), like ``threshold``
  and ``effective_threshold``;
* ratios, current over baseline: ``ratio`` (``1 + change``) and ``ratio_ci`` (``1 + change_ci``),
  like ``first_ratio`` and ``machine_factor``.

An interval is null where the verdict needed none (a stage clearly within its threshold).

Samples, ``"samples": "lean"`` (the default): a report holds each sample once, where nothing
else does. Every stage row has this run's ``samples_ms``. A row's ``baseline`` has every field
of the stored entry but ``samples_ms`` when the baseline file (``meta.baseline_file``, the test's
module in place of ``{module}``) still holds that entry, under ``devices[device_key].tests
[nodeid][stage]``; it has them when the run re-recorded the stage (``updated``: the file now holds
this run's samples) and on cycle rows (a sum no file stores). A first-call (``kind`` "cold") row
has ``samples_ms: []``: its number is ``median_ms``, and the warm samples are its stage row's.
At 2,000 stages: 5.6 MB instead of 7.9. ``"samples": "all"`` (``--llmcycle-report-samples``)
writes every baseline's samples and the cold rows' copies too, as schema 2 did.

Schema history: schema 1 wrote ``ci``, the interval of the *ratio*, next to ``change``, a
*fraction*; schema 2 names it ``ratio_ci``, adds ``change_ci`` and ``meta.dirty`` (see
``outputs.run_meta``); schema 3 adds ``samples`` and leaves out the copies above. Readers take a
row's own samples and ``verdict.threshold``, the same in every schema, so ``llmcycle compare``
and ``llmcycle show`` read all three.

Rendering, and reading a report back for ``llmcycle show/compare`` (:func:`stage_rows`, which
validates each row as strictly as a baseline entry). No timing, no pytest.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator, Mapping, Sequence

from ..storage.baseline import entries_to_json
from ..run.results import COLD, CYCLE, StageResult

FORMAT = "pytest-llmcycle-report"
SCHEMA = 3
#: the ``samples`` field: where a report writes each copy of a sample (see the module docstring)
LEAN, ALL = "lean", "all"


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


def result_dicts(results: Sequence[StageResult], all_samples: bool = True) -> list[dict[str, Any]]:
    """The report's rows: each record, its label and its stored baseline entry (all baselines'
    samples rounded in one batch). ``all_samples=False``: the lean rows of the module docstring
    (no baseline samples the baseline file holds, no cold-row copies)."""
    return list(_rows(results, all_samples))


def _rows(results: Sequence[StageResult], all_samples: bool) -> Iterator[dict[str, Any]]:
    """:func:`result_dicts` one row at a time (the report encodes each as it comes: at 2,000
    stages, 4,500 row dicts are never all alive at once)."""
    keep = [all_samples or _baseline_samples_kept(r) for r in results]
    entries = [r.baseline for r, k in zip(results, keep) if r.baseline is not None and k]
    stored = iter(entries_to_json(entries))  # type: ignore[arg-type]
    for r, k in zip(results, keep):
        d = r.to_dict(samples=all_samples or r.kind != COLD)
        d["label"] = r.label
        if r.baseline is None:
            d["baseline"] = None
        elif k:
            d["baseline"] = next(stored)
        else:
            d["baseline"] = b = r.baseline.to_json(_rounded_samples=[])
            del b["samples_ms"]  # in the baseline file, where this entry still is
        d["verdict"] = _verdict_scales(d["verdict"])
        yield d


def _baseline_samples_kept(r: StageResult) -> bool:
    """Whether a lean report writes ``r``'s baseline samples: only where the baseline file does
    not hold them (the run re-recorded the stage, or the row is a cycle total no file stores)."""
    return r.updated or r.kind == CYCLE


def _verdict_scales(v: dict[str, Any]) -> dict[str, Any]:
    """The verdict with its interval on both scales (see the module docstring): the record's
    ``ci`` (an interval of the ratio) as ``ratio_ci``, and ``change_ci``, a fraction like ``change``."""
    v = dict(v)
    ci = v.pop("ci", None)
    v["ratio_ci"] = None if ci is None else [ci[0], ci[1]]
    v["change_ci"] = None if ci is None else [ci[0] - 1.0, ci[1] - 1.0]
    return v


def render(results: Sequence[StageResult], meta: Mapping[str, Any], all_samples: bool = False) -> str:
    """The report's text; ``all_samples``: every copy of every sample (``--llmcycle-report-samples``)."""
    head = _line({"format": FORMAT, "schema": SCHEMA, "samples": ALL if all_samples else LEAN, "meta": dict(meta)})
    # One line per result (not indent=): json's C encoder only runs without indent, 5x faster
    # at 2,000 stages, and `python -m json.tool` pretty-prints it for a person.
    rows = [_line(r) for r in _rows(results, all_samples)]
    return head[:-1] + ', "results": [\n' + ",\n".join(rows) + "\n]}\n"


def _line(d: Mapping[str, Any]) -> str:
    """One object as one line of strict JSON. Nearly every row is finite and goes straight to
    the C encoder; one holding a NaN or an infinity is refused there and cleaned first."""
    try:
        return json.dumps(d, sort_keys=True, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_clean(d), sort_keys=True, allow_nan=False, default=str)


# --------------------------------------------------------------------------- reading (llmcycle show/compare)


class ReportError(ValueError):
    """A JSON report that does not hold what the plugin writes; one line naming the file and the row."""


#: a stage row's fields that make its stored measurement (an entry of the baseline file's format)
_ENTRY_FIELDS = ("median_ms", "q1_ms", "q3_ms", "n", "samples_ms", "unit", "cold_ms", "env", "counters")


def is_report(doc: Any) -> bool:
    """Whether a parsed JSON document says it is a JSON report (its rows still need :func:`stage_rows`)."""
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def stage_rows(doc: Mapping[str, Any], path: Any) -> list[tuple[str, str, str, dict, float | None]]:
    """The measured stages of a report ``doc`` read from ``path``: ``(device_key, nodeid, stage,
    entry, threshold)``, each entry in the baseline file's format and validated by the same rule
    (``storage.baseline``): positive finite milliseconds, a non-empty samples list, the required
    fields. Cycle totals and cold calls are derived rows and are left out. Raises
    :class:`ReportError` for anything the plugin would not have written.
    """
    from ..storage.baseline import validate_entry  # the baseline file's own entry rule, not a copy

    def bad(where: str, what: str) -> ReportError:
        return ReportError(f"JSON report {path}: {where} {what}; write the report again with pytest --llmcycle-report")

    schema = doc.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise bad("'schema'", f"is {_short(schema)}, expected {SCHEMA}")
    if schema > SCHEMA:
        raise ReportError(f"JSON report {path} has schema {schema}, newer than this pytest-llmcycle reads ({SCHEMA}): upgrade pytest-llmcycle")
    if not isinstance(doc.get("meta", {}), dict):
        raise bad("'meta'", "is not an object")
    results = doc.get("results")
    if not isinstance(results, list):
        raise bad("'results'", "is not a list of rows")
    out: list[tuple[str, str, str, dict, float | None]] = []
    seen: set = set()
    for i, row in enumerate(results):
        where = f"results[{i}]"
        if not isinstance(row, dict):
            raise bad(where, "is not an object")
        kind = row.get("kind", "stage")
        if not isinstance(kind, str):
            raise bad(where, f"has kind={_short(kind)}, expected a string")
        if kind != "stage":
            continue  # cycle totals and cold calls: derived from the stage rows, not stored measurements
        for name in ("nodeid", "stage", "device_key"):
            if not isinstance(row.get(name), str) or (name != "device_key" and not row[name]):
                raise bad(where, f"has {name}={_short(row.get(name))}, expected a non-empty string")
        key = (row["device_key"], row["nodeid"], row["stage"])
        where = f"{where} ({key[1]!r}, stage {key[2]!r})"
        if key in seen:
            raise bad(where, "repeats a stage of an earlier row")
        seen.add(key)
        # absent bounds and cold time are allowed in a baseline entry too; null is how a report writes them
        entry = {k: row[k] for k in _ENTRY_FIELDS if k in row and not (row[k] is None and k in ("q1_ms", "q3_ms", "cold_ms"))}
        validate_entry(entry, where, bad)
        verdict = row.get("verdict")
        if verdict is not None and not isinstance(verdict, dict):
            raise bad(where, "has a 'verdict' that is not an object")
        threshold = (verdict or {}).get("threshold")
        if threshold is not None and not (
            isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < 1
        ):
            raise bad(where, f"has threshold={_short(threshold)}, expected a fraction between 0 and 1")
        out.append((*key, entry, threshold))
    return out


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
