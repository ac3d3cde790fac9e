"""The history store: each run's stage medians appended to an embedded SQLite file, for trends.

The interface is deliberately two methods (:class:`HistoryStore`), so a team can point the
plugin at its own database by writing a class with the same two methods. Stdlib only.

A history file says it is one: SQLite's header field ``application_id`` holds
:data:`APPLICATION_ID` and ``user_version`` the schema version. Any other SQLite file (an
application's database given by mistake) is refused and left byte for byte as it was, except
one holding exactly the tables an unmarked history of an earlier version holds: it is read as
it is, and the writer stamps the marker on it. Readers open read-only and create nothing;
only :meth:`SQLiteHistory.append` creates a file, where there is none or it is empty.
"""
from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

#: the header marker of a history file: "LLMC" as a big-endian 32-bit integer
APPLICATION_ID = 0x4C4C4D43
#: the schema version in ``user_version``; a file of a newer one is refused, not misread
SCHEMA_VERSION = 1

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


class HistoryError(sqlite3.DatabaseError):
    """A file that is not a history file, of a newer schema, or unreadable; nothing in it was changed.

    A ``sqlite3.DatabaseError``, so a caller that handles SQLite's errors handles it too.
    """


@functools.lru_cache(maxsize=1)
def _history_layout() -> frozenset:
    """The (type, name, sql) of every object a history file holds, as SQLite records them."""
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(_SCHEMA)
        return _layout(con)
    finally:
        con.close()


def _layout(con: sqlite3.Connection) -> frozenset:
    # SQLite's own objects (sqlite_sequence of AUTOINCREMENT, sqlite_stat1 of ANALYZE) vary with use
    return frozenset(con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"))


class SQLiteHistory:
    """History in one SQLite file (created on first append); safe for sequential CI runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _empty(self) -> bool:
        """No history yet: no file, or a zero-byte one (what ``touch`` or a new temp file leaves)."""
        if self.path.is_dir():
            raise HistoryError(f"{self.path}: a folder, not a history file")
        return not self.path.exists() or self.path.stat().st_size == 0

    def _check(self, con: sqlite3.Connection, new: bool = False) -> bool:
        """Raise :class:`HistoryError` unless ``con`` holds a history (or, when ``new``, nothing
        at all); True when the marker is still to be stamped."""
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            layout = _layout(con)
        except sqlite3.OperationalError:  # locked past the timeout, an I/O error: not the file's nature
            raise
        except sqlite3.DatabaseError as e:  # a SQLite header on something else (corrupt, encrypted)
            raise HistoryError(f"{self.path}: not a history file (SQLite cannot read it: {e}); it was left unchanged") from None
        if app == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"{self.path}: a history file of schema {version}, newer than this pytest-llmcycle reads "
                    f"({SCHEMA_VERSION}); upgrade pytest-llmcycle"
                )
            return False
        if layout == _history_layout() or (new and not layout and app == 0 and version == 0):
            return True
        raise self._foreign("its tables are not a history's")

    def _foreign(self, why: str) -> HistoryError:
        return HistoryError(
            f"{self.path}: not a history file: a SQLite database without the pytest-llmcycle history marker "
            f"({why}); it was left unchanged (a history file is one that pytest --llmcycle-history PATH created)"
        )

    def _peek(self) -> None:
        """Refuse from the file's first bytes, before SQLite opens it, what cannot be a history:
        even read-only, SQLite leaves -wal and -shm files next to a database in WAL mode."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)  # the database header
        except OSError as e:
            raise HistoryError(f"{self.path}: cannot read the history file ({e})") from None
        if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
            raise HistoryError(f"{self.path}: not a history file (not a SQLite database); it was left unchanged")
        app = int.from_bytes(head[68:72], "big", signed=True)
        if app == APPLICATION_ID:
            return
        if app != 0:
            raise self._foreign(f"it carries another application's id, {app}")
        if head[18:20] != b"\x01\x01":  # 2: WAL mode, which no history of an earlier version is in
            raise self._foreign("it is in WAL mode")

    def _reader(self) -> sqlite3.Connection | None:
        """A read-only connection to a checked history file; None when there is no history yet."""
        if self._empty():
            return None
        self._peek()
        # mode=ro: reading never creates a file or a table, nor changes a byte
        con = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            self._check(con)
        except BaseException:
            con.close()
            raise
        return con

    def _writer(self) -> sqlite3.Connection:
        """A connection inside a write transaction on a checked history file (a new one created and marked)."""
        new = self._empty()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:  # look read-only first: a foreign file is refused before it is opened for writing
            ro = self._reader()
            if ro is not None:
                ro.close()
        con = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            if self._check(con, new=new):  # again under the lock: another run may have created it meanwhile
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in _SCHEMA.split(";"):  # not executescript: it would commit first
                    if statement.strip():
                        con.execute(statement)
        except BaseException:
            con.close()  # rolls back: nothing was changed
            raise
        return con

    def append(self, run_meta: Mapping[str, Any], results: Iterable[Any]) -> int:
        """Store one run; returns its id. Cold-call rows are not stored (never gated)."""
        rows = [_row(r) for r in results]
        rows = [r for r in rows if r["kind"] != "cold"]
        con = self._writer()
        try:
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
            con.execute("COMMIT")
            return run_id
        finally:
            con.close()  # without the COMMIT above: rolled back

    def series(self, nodeid: str, stage: str, device_key: str | None = None) -> list[Point]:
        """The stage's values, oldest run first (optionally of one device key only)."""
        sql = (
            "SELECT runs.id, runs.created, runs.commit_id, median_ms, q1_ms, q3_ms, n, outcome, unit, results.device_key"
            " FROM results JOIN runs ON runs.id = results.run_id WHERE nodeid = ? AND stage = ?"
        )
        args: list[Any] = [nodeid, stage]
        if device_key is not None:
            sql += " AND results.device_key = ?"
            args.append(device_key)
        con = self._reader()
        if con is None:
            return []
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
        con = self._reader() if wanted else None
        if con is None:
            return out
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
        con = self._reader()
        if con is None:
            return []
        try:
            return [tuple(r) for r in con.execute("SELECT DISTINCT device_key, nodeid, stage FROM results ORDER BY 1, 2, 3")]
        finally:
            con.close()


def open_store(path: str | Path) -> HistoryStore:
    return SQLiteHistory(path)
