"""Stored measurements from two files -> verdicts, with the plugin's own verdict engine.

A *snapshot* is what one file holds: a baseline file (``.llmcycle/baselines.json``) or a JSON
report (``--llmcycle-report x.json``), both read into ``(device_key, nodeid, stage) -> Entry``.
Comparing two snapshots judges each stage's new samples against its old ones exactly as a test
does, with the same rule (:func:`pytest_llmcycle.engine.verdict.decide`: unit and environment,
counters, threshold, rank test, bootstrap interval, machine-speed normalisation when both files
carry a reference workload); no re-measure is possible, so the samples must speak for
themselves. Reads files, never times anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import verdict as vd
from .storage.baseline import Baselines, BaselineError, Entry
from .run.results import StageResult

Key = tuple  # (device_key, nodeid, stage)
REMOVED = "removed"  # a stage only the old file has: listed, never gated


class SnapshotError(Exception):
    """A file that is neither a baseline file nor a JSON report; the message says which file."""


@dataclass
class Snapshot:
    path: Path
    kind: str  # "baseline" or "report"
    entries: dict = field(default_factory=dict)  # Key -> Entry
    references: dict = field(default_factory=dict)  # device_key -> Entry
    thresholds: dict = field(default_factory=dict)  # Key -> the threshold the test used (reports)
    meta: dict = field(default_factory=dict)


FORMAT_HINT = '"format": "pytest-llmcycle-report"'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number the plugin writes")


def load(path: str | Path) -> Snapshot:
    """Read a baseline file, a folder of per-module baseline files or a JSON report, validated
    as the plugin validates what it reads; anything else raises :class:`SnapshotError` (one line)."""
    from .reports.jsondoc import ReportError, is_report, stage_rows

    p = Path(path)
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise SnapshotError(f"{str(p)!r}: not a usable path ({e})") from None
    if is_dir:
        return _load_folder(p)
    if not is_file:
        raise SnapshotError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
        doc = json.loads(text, parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: bad JSON, NaN/Infinity, an integer too long to read; RecursionError: nesting too deep
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SnapshotError(f"{p}: not a readable JSON file ({what})") from None
    if is_report(doc):
        try:
            rows = stage_rows(doc, p)
        except ReportError as e:
            raise SnapshotError(str(e)) from None
        snap = Snapshot(p, "report", meta=dict(doc.get("meta") or {}))
        for dk, nodeid, stage, entry, threshold in rows:
            snap.entries[(dk, nodeid, stage)] = Entry.from_json(entry)
            snap.thresholds[(dk, nodeid, stage)] = threshold
        return snap
    if isinstance(doc, dict) and "results" in doc and "devices" not in doc:  # its rows must not be read as no entries
        raise SnapshotError(f"{p}: a JSON report without its 'format' field ({FORMAT_HINT}); write it again with pytest --llmcycle-report")
    if isinstance(doc, dict) and "schema" in doc:
        try:
            b = Baselines.loads(text, p)
        except BaselineError as e:
            raise SnapshotError(str(e)) from None
        snap = Snapshot(p, "baseline")
        for key, nodeid, stage, entry in b.iter_entries():
            snap.entries[(key, nodeid, stage)] = entry
        for key in b.devices():
            ref = b.reference(key)
            if ref is not None:
                snap.references[key] = ref
        return snap
    raise SnapshotError(f"{p}: neither a pytest-llmcycle baseline file nor a JSON report (--llmcycle-report x.json)")


def _load_folder(folder: Path) -> Snapshot:
    """Every baseline file in ``folder`` (``--llmcycle-baseline 'folder/{module}.json'``) as one snapshot."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SnapshotError(f"{folder}: a folder with no .json baseline files")
    snap = Snapshot(folder, "baseline")
    for f in files:
        part = load(f)
        if part.kind != "baseline":
            raise SnapshotError(f"{f}: a JSON report in a folder of baseline files; give it on its own")
        snap.entries.update(part.entries)
        for key, ref in part.references.items():
            snap.references.setdefault(key, ref)  # the files of one recording share it
    return snap


def shared_device_keys(old: Snapshot, new: Snapshot) -> set:
    return {k for k, _, _ in old.entries} & {k for k, _, _ in new.entries}


def machine_factor(old: Snapshot, new: Snapshot, device_key: str) -> float | None:
    """New / old median of the reference workload, when both files stored the same one."""
    a, b = old.references.get(device_key), new.references.get(device_key)
    if a is None or b is None or a.extra.get("workload") != b.extra.get("workload"):
        return None
    return b.median_ms / a.median_ms


def compare(
    old: Snapshot,
    new: Snapshot,
    threshold: float | None = None,
    alpha: float = 0.01,
    device_key: str | None = None,
    counters: Any = None,
) -> list[StageResult]:
    """One row per stage in either file. ``threshold`` None: the test's own (reports), else 10 %.

    Only device keys both files have are compared (a baseline file holds every runner class,
    a report one), unless they share none; ``device_key`` picks one. ``counters``: which counters
    gate and how tightly (the plugin's counter policy; None: its default).
    """
    keys = shared_device_keys(old, new) or {k for k, _, _ in old.entries} | {k for k, _, _ in new.entries}
    rows = []
    for key in sorted(set(old.entries) | set(new.entries)):
        dk, nodeid, stage = key
        if (device_key is not None and dk != device_key) or dk not in keys:
            continue
        before, after = old.entries.get(key), new.entries.get(key)
        thr = threshold if threshold is not None else (new.thresholds.get(key) or old.thresholds.get(key) or 0.10)
        if after is None:
            v = vd.Verdict(REMOVED, thr, thr, reason=f"only in {old.path.name}")
            rows.append(StageResult(nodeid, stage, dk, v, unit=before.unit, median_ms=None, baseline=before))
            continue
        case = vd.Case(
            before.evidence() if before else None,
            after.evidence(),
            # stored samples stand as they are: the run that wrote them had its re-measure
            vd.Rules(thr, alpha, vd.CONFIRM_NOT_NEEDED, counters=counters),  # the plugin's counter policy
            machine_factor=machine_factor(old, new, dk),
        )
        v = vd.decide(case)
        rows.append(
            StageResult(
                nodeid, stage, dk, v, unit=after.unit, median_ms=after.median_ms, q1_ms=after.q1_ms, q3_ms=after.q3_ms,
                n=after.n, baseline=before, cold_ms=after.cold_ms, samples_ms=tuple(after.samples_ms), env=dict(after.env),
                counters=dict(after.counters),
            )
        )
    return rows


def exit_code(rows: list[StageResult], strict: bool = False) -> int:
    """The plugin's exit codes: 1 when a stage regressed (or, strict, has no usable baseline)."""
    bad = {vd.REGRESSED} | ({vd.NEW, vd.NOT_COMPARABLE} if strict else set())
    return 1 if any(r.outcome in bad for r in rows) else 0


def to_json(rows: list[StageResult], **about: Any) -> str:
    from .reports.jsondoc import result_dicts

    return json.dumps({"compare": about, "results": result_dicts(rows)}, indent=1, sort_keys=True, default=str) + "\n"
