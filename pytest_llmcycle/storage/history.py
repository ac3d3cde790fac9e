"""The history store: each run's stage medians appended to an embedded SQLite file, for trends.

The interface is deliberately two methods (:class:`HistoryStore`), so a team can point the
plugin at its own database by writing a class with the same two methods. Stdlib only.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    device_key TEXT,
    commit_id TEXT,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    nodeid TEXT NOT NULL,
    stage TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_key TEXT NOT NULL,
    unit TEXT NOT NULL,
    median_ms REAL,
    q1_ms REAL,
    q3_ms REAL,
    n INTEGER,
    outcome TEXT,
    change REAL
);
CREATE INDEX IF NOT EXISTS results_key ON results (nodeid, stage, device_key);
"""


@dataclass(frozen=True)
class Point:
    """One run's value of one stage."""

    run_id: int
    created: str
    commit: str | None
    median_ms: float | None
    q1_ms: float | None
    q3_ms: float | None
    n: int | None
    outcome: str | None
    unit: str
    device_key: str


@runtime_checkable
class HistoryStore(Protocol):
    """What the plugin needs from a history store: write a run, read a stage's series."""

    def append(self, run_meta: Mapping[str, Any], results: Iterable[Any]) -> int: ...

    def series(self, nodeid: str, stage: str, device_key: str | None = None) -> list[Point]: ...


#: the columns a row stores, read as attributes of a StageResult or keys of a JSON-report row
_FIELDS = ("nodeid", "stage", "kind", "device_key", "unit", "median_ms", "q1_ms", "q3_ms", "n", "outcome")


def _row(r: Any) -> dict:
    """A StageResult or a JSON-report row, as the columns stored (a StageResult's samples are
    not copied through ``to_dict``)."""
    if hasattr(r, "verdict") and hasattr(r, "to_dict"):
        d = {k: getattr(r, k) for k in _FIELDS}
        verdict = {"change": r.verdict.change}
    else:
        d = dict(r)
        verdict = d.get("verdict") or {}
    return {
        "nodeid": d["nodeid"],
        "stage": d["stage"],
        "kind": d.get("kind", "stage"),
        "device_key": d.get("device_key", ""),
        "unit": d.get("unit", "call"),
        "median_ms": d.get("median_ms"),
        "q1_ms": d.get("q1_ms"),
        "q3_ms": d.get("q3_ms"),
        "n": d.get("n"),
        "outcome": d.get("outcome", verdict.get("outcome")),
        "change": verdict.get("change"),
    }


class SQLiteHistory:
    """History in one SQLite file (created on first use); safe for sequential CI runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=30)
        con.executescript(_SCHEMA)
        return con

    def append(self, run_meta: Mapping[str, Any], results: Iterable[Any]) -> int:
        """Store one run; returns its id. Cold-call rows are not stored (never gated)."""
        rows = [_row(r) for r in results]
        rows = [r for r in rows if r["kind"] != "cold"]
        con = self._connect()
        try:
            with con:
                cur = con.execute(
                    "INSERT INTO runs (created, device_key, commit_id, meta) VALUES (?, ?, ?, ?)",
                    (
                        str(run_meta.get("created", "")),
                        run_meta.get("device_key"),
                        run_meta.get("commit"),
                        json.dumps(dict(run_meta), sort_keys=True, default=str),
                    ),
                )
                run_id = int(cur.lastrowid)
                con.executemany(
                    "INSERT INTO results (run_id, nodeid, stage, kind, device_key, unit, median_ms, q1_ms, q3_ms, n, outcome, change)"
                    " VALUES (:run_id, :nodeid, :stage, :kind, :device_key, :unit, :median_ms, :q1_ms, :q3_ms, :n, :outcome, :change)",
                    [dict(r, run_id=run_id) for r in rows],
                )
            return run_id
        finally:
            con.close()

    def series(self, nodeid: str, stage: str, device_key: str | None = None) -> list[Point]:
        """The stage's values, oldest run first (optionally of one device key only)."""
        if not self.path.exists():
            return []
        sql = (
            "SELECT runs.id, runs.created, runs.commit_id, median_ms, q1_ms, q3_ms, n, outcome, unit, results.device_key"
            " FROM results JOIN runs ON runs.id = results.run_id WHERE nodeid = ? AND stage = ?"
        )
        args: list[Any] = [nodeid, stage]
        if device_key is not None:
            sql += " AND results.device_key = ?"
            args.append(device_key)
        con = self._connect()
        try:
            return [Point(*row) for row in con.execute(sql + " ORDER BY runs.id", args)]
        finally:
            con.close()

    def series_many(self, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[Point]]:
        """``{(nodeid, stage, device_key): series(nodeid, stage, device_key)}`` in one query.

        What a report with thousands of stages reads: one connection and one indexed join,
        not a connection per stage.
        """
        wanted = sorted(set(keys))
        out: dict[tuple[str, str, str], list[Point]] = {k: [] for k in wanted}
        if not wanted or not self.path.exists():
            return out
        con = self._connect()
        try:
            con.execute("CREATE TEMP TABLE want (nodeid TEXT, stage TEXT, device_key TEXT)")
            con.executemany("INSERT INTO want VALUES (?, ?, ?)", wanted)
            rows = con.execute(
                "SELECT want.nodeid, want.stage, want.device_key,"
                " runs.id, runs.created, runs.commit_id, median_ms, q1_ms, q3_ms, n, outcome, unit, results.device_key"
                " FROM want JOIN results ON results.nodeid = want.nodeid AND results.stage = want.stage"
                " AND results.device_key = want.device_key JOIN runs ON runs.id = results.run_id ORDER BY runs.id"
            )
            for row in rows:
                out[tuple(row[:3])].append(Point(*row[3:]))
            return out
        finally:
            con.close()

    def keys(self) -> list[tuple[str, str, str]]:
        """Every (device_key, nodeid, stage) stored, sorted: what ``llmcycle history`` lists."""
        if not self.path.exists():
            return []
        con = self._connect()
        try:
            return [tuple(r) for r in con.execute("SELECT DISTINCT device_key, nodeid, stage FROM results ORDER BY 1, 2, 3")]
        finally:
            con.close()


def open_store(path: str | Path) -> HistoryStore:
    return SQLiteHistory(path)
