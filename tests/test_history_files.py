"""History opens only history files: a marked SQLite file it created, or an unmarked one of an
earlier version (recognised by its exact tables). Any other file is refused, byte for byte as it
was, by the writer (``--llmcycle-history``) and by the read-only ``llmcycle history``.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy  # noqa: F401 - numpy and torch cannot load twice in one process (inline pytester runs)
import pytest
import torch  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.run.results import StageResult
from pytest_llmcycle.storage.history import APPLICATION_ID, SCHEMA_VERSION, HistoryError, SQLiteHistory

#: the tables of a history file before the marker (pytest-llmcycle up to this change), as it wrote them
LEGACY_SCHEMA = """
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

#: databases of an application that someone points --llmcycle-history at by mistake
FOREIGN = {
    "an app's users": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada');",
    "its own runs table": "CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT, status TEXT); INSERT INTO runs (job) VALUES ('nightly');",
    "history tables next to an app's": LEGACY_SCHEMA + "CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL);",
    "no tables, settings only": "PRAGMA user_version = 7;",
    "in WAL mode": "PRAGMA journal_mode = WAL; CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);",
    "another application's id": "PRAGMA application_id = 1234; " + LEGACY_SCHEMA,
}


def row(nodeid: str = "t::a", stage: str = "decode", median: float = 1.0, key: str = "cpu-a") -> StageResult:
    return StageResult(nodeid, stage, key, vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.0), unit="token",
                       median_ms=median, q1_ms=median * 0.9, q3_ms=median * 1.1, n=20)


def make_db(path: Path, script: str) -> Path:
    con = sqlite3.connect(path)
    con.executescript(script)
    con.commit()
    con.close()
    return path


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file in the folder and its content: a refused file is unchanged, and no journal is left."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def header(path: Path) -> tuple[int, int]:
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA application_id").fetchone()[0], con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("script", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_database_is_refused_and_left_unchanged(tmp_path, capsys, script):
    db = make_db(tmp_path / "app.db", script)
    before = fingerprint(tmp_path)
    store = SQLiteHistory(db)
    with pytest.raises(HistoryError, match=r"app\.db: not a history file.*left unchanged"):
        store.append({"created": "t"}, [row()])
    for read in (store.keys, lambda: store.series("t::a", "decode"), lambda: store.series_many([("t::a", "decode", "cpu-a")])):
        with pytest.raises(HistoryError, match="not a history file"):
            read()
    assert cli.main(["history", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{db}: not a history file" in err and "pytest-llmcycle" in err
    assert fingerprint(tmp_path) == before


def test_a_run_pointed_at_a_foreign_database_says_so_and_passes(pytester):
    db = make_db(pytester.path / "app.db", FOREIGN["an app's users"])
    pytester.makepyfile("def test_sum(llmcycle):\n    llmcycle.measure('sum', lambda: sum(range(3000)))\n")
    before = db.read_bytes()
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-history", "app.db")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmcycle: history *app.db NOT written: *not a history file*"])
    assert db.read_bytes() == before and not (pytester.path / "app.db-journal").exists()


def test_a_new_history_file_carries_the_marker(tmp_path):
    path = tmp_path / "new" / "h.sqlite"
    SQLiteHistory(path).append({"created": "t"}, [row()])
    assert header(path) == (APPLICATION_ID, SCHEMA_VERSION)
    assert [p.median_ms for p in SQLiteHistory(path).series("t::a", "decode")] == [1.0]


def test_readers_create_nothing_and_an_empty_file_becomes_a_history_only_when_written(tmp_path, capsys):
    empty = tmp_path / "h.sqlite"
    empty.touch()
    store = SQLiteHistory(empty)
    assert store.keys() == [] and store.series("t::a", "decode") == [] and store.series_many([("a", "b", "c")]) == {("a", "b", "c"): []}
    assert cli.main(["history", str(empty)]) == 0
    capsys.readouterr()
    assert empty.stat().st_size == 0 and fingerprint(tmp_path) == {"h.sqlite": hashlib.sha256(b"").hexdigest()}
    absent = SQLiteHistory(tmp_path / "sub" / "none.sqlite")
    assert absent.keys() == [] and not (tmp_path / "sub").exists()
    store.append({"created": "t"}, [row()])
    assert header(empty) == (APPLICATION_ID, SCHEMA_VERSION) and len(store.keys()) == 1


def test_a_history_of_the_previous_version_is_read_unchanged_and_stamped_by_the_writer(tmp_path, capsys):
    old = make_db(tmp_path / "old.sqlite", LEGACY_SCHEMA + """
        INSERT INTO runs (created, device_key, commit_id, meta) VALUES ('2026-01-01', 'cpu-a', 'c0', '{}');
        INSERT INTO results VALUES (1, 't::a', 'decode', 'stage', 'cpu-a', 'token', 1.0, 0.9, 1.1, 20, 'ok', 0.0);
    """)
    before = fingerprint(tmp_path)
    assert cli.main(["history", str(old)]) == 0  # read-only: read as it is
    assert "t::a" in capsys.readouterr().out
    assert [p.median_ms for p in SQLiteHistory(old).series("t::a", "decode")] == [1.0]
    assert fingerprint(tmp_path) == before and header(old) == (0, 0)
    SQLiteHistory(old).append({"created": "2026-01-02"}, [row(median=2.0)])
    assert header(old) == (APPLICATION_ID, SCHEMA_VERSION)
    assert [p.median_ms for p in SQLiteHistory(old).series("t::a", "decode")] == [1.0, 2.0]


def test_a_history_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    SQLiteHistory(path).append({"created": "t"}, [row()])
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = fingerprint(tmp_path)
    for call in (lambda s: s.keys(), lambda s: s.append({"created": "t"}, [row()])):
        with pytest.raises(HistoryError, match=r"newer than this pytest-llmcycle reads .*upgrade"):
            call(SQLiteHistory(path))
    assert fingerprint(tmp_path) == before


def test_a_file_that_is_not_sqlite_or_a_folder_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 200, encoding="utf-8")
    with pytest.raises(HistoryError, match=r"notes\.txt: not a history file \(not a SQLite database"):
        SQLiteHistory(junk).append({"created": "t"}, [row()])
    assert junk.read_text(encoding="utf-8") == "not a database\n" * 200
    with pytest.raises(HistoryError, match="a folder, not a history file"):
        SQLiteHistory(tmp_path).keys()


def test_the_history_command_prints_stored_text_escaped(tmp_path, capsys):
    path = tmp_path / "h.sqlite"
    SQLiteHistory(path).append({"created": "t"}, [row(nodeid="t::a[\x1b]0;pwned\x07]", stage="s\nforged", key="k\x9b2J")])
    assert cli.main(["history", str(path)]) == 0
    out = capsys.readouterr().out
    assert "t::a[\\x1b]0;pwned\\x07]" in out and "s\\nforged" in out and "k\\x9b2J" in out
    assert len(out.strip().splitlines()) == 3  # header, rule, one row


# ----------------------------------------------------------------------------- fuzz

_name = st.sampled_from(["runs", "results", "results_key", "users", "meta", "history"]) | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_column = st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.sampled_from(["TEXT", "REAL", "INTEGER", "BLOB", ""]))
_table = st.tuples(_name, st.lists(_column, min_size=1, max_size=5, unique_by=lambda c: c[0]))


def quoted(name: str) -> str:
    return '"' + name + '"'  # "in", "order": keywords are names too


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=st.lists(_table, min_size=1, max_size=4, unique_by=lambda t: t[0]), app_id=st.sampled_from([0, 1, 0x5A5A5A5A]),
       user_version=st.integers(0, 3))
def test_fuzz_any_foreign_schema_is_refused_unchanged(tmp_path_factory, capsys, tables, app_id, user_version):
    folder = tmp_path_factory.mktemp("db")
    script = f"PRAGMA application_id = {app_id}; PRAGMA user_version = {user_version};" + "".join(
        f"CREATE TABLE {quoted(name)} ({', '.join(f'{quoted(c)} {t}'.strip() for c, t in cols)});" for name, cols in tables
    )
    db = make_db(folder / "x.db", script)
    before = fingerprint(folder)
    with pytest.raises(HistoryError):
        SQLiteHistory(db).append({"created": "t"}, [row()])
    assert cli.main(["history", str(db)]) == 2
    assert "not a history file" in capsys.readouterr().err
    assert fingerprint(folder) == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=2048), sqlite_magic=st.booleans())
def test_fuzz_arbitrary_bytes_are_refused_unchanged(tmp_path_factory, data, sqlite_magic):
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / "h.sqlite"
    path.write_bytes((b"SQLite format 3\x00" if sqlite_magic else b"") + data)
    before = fingerprint(folder)
    with pytest.raises(sqlite3.DatabaseError):  # HistoryError is one
        SQLiteHistory(path).append({"created": "t"}, [row()])
    assert fingerprint(folder) == before


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nodeid=_text, stage=_text, key=_text, commit=_text)
def test_fuzz_any_text_round_trips_through_a_history_file(tmp_path_factory, capsys, nodeid, stage, key, commit):
    path = tmp_path_factory.mktemp("h") / "h.sqlite"
    store = SQLiteHistory(path)
    for m in (1.0, 2.0):
        store.append({"created": "t", "commit": commit, "device_key": key}, [row(nodeid, stage, m, key)])
    assert store.keys() == [(key, nodeid, stage)]
    pts = store.series(nodeid, stage, key)
    assert [p.median_ms for p in pts] == [1.0, 2.0] and pts[0].commit == commit
    assert store.series_many([(nodeid, stage, key)]) == {(nodeid, stage, key): pts}
    assert cli.main(["history", str(path)]) == 0
    out = capsys.readouterr().out
    assert len(out.strip("\n").splitlines()) == 3  # header, rule, one row: nothing in the text adds a line
    assert not any(0x00 <= ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in out)
