"""The history store (SQLite): runs appended, series read back in order; trends in the CLI and HTML."""
from __future__ import annotations

import sqlite3

import numpy  # noqa: F401 - modules first imported inside inline pytester runs are dropped after it;
import pytest
import torch  # noqa: F401 - torch and numpy cannot load twice in one process

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.storage.history import HistoryStore, SQLiteHistory, open_store
from pytest_llmcycle.run.results import COLD, StageResult


def row(nodeid: str, stage: str, median: float, key: str = "cpu-a", kind: str = "stage", outcome: str = vd.OK) -> StageResult:
    return StageResult(nodeid, stage, key, vd.Verdict(outcome, 0.1, 0.1, ratio=1.0), kind=kind, unit="token",
                       median_ms=median, q1_ms=median * 0.9, q3_ms=median * 1.1, n=20)


def test_series_returns_each_run_oldest_first(tmp_path):
    store = SQLiteHistory(tmp_path / "h" / "history.sqlite")  # the folder is created
    for i, m in enumerate([1.0, 1.2, 0.9]):
        store.append({"created": f"2026-01-0{i + 1}T00:00:00", "commit": f"c{i}", "device_key": "cpu-a"},
                     [row("t::a", "decode", m), row("t::a", "decode", 50.0, kind=COLD), row("t::b", "prefill", 5.0 + i)])
    pts = store.series("t::a", "decode")
    assert [p.median_ms for p in pts] == [1.0, 1.2, 0.9]
    assert [p.commit for p in pts] == ["c0", "c1", "c2"] and pts[0].unit == "token" and pts[0].q3_ms == pytest.approx(1.1)
    assert [p.run_id for p in pts] == sorted(p.run_id for p in pts)
    assert store.keys() == [("cpu-a", "t::a", "decode"), ("cpu-a", "t::b", "prefill")]  # cold rows are not stored


def test_series_of_one_device_key_and_of_nothing(tmp_path):
    store = open_store(tmp_path / "h.sqlite")
    assert isinstance(store, HistoryStore)
    assert store.series("t::a", "decode") == []  # no file yet: empty, nothing created
    assert not (tmp_path / "h.sqlite").exists()
    store.append({"created": "x"}, [row("t::a", "decode", 1.0, key="cpu-a"), row("t::a", "decode", 2.0, key="cuda-b")])
    assert [p.median_ms for p in store.series("t::a", "decode", "cuda-b")] == [2.0]
    assert len(store.series("t::a", "decode")) == 2


def test_series_many_reads_what_series_reads_in_one_go(tmp_path):
    store = SQLiteHistory(tmp_path / "h.sqlite")
    missing = ("t::nothing", "decode", "cpu-a")
    assert store.series_many([missing]) == {missing: []}  # no file yet
    for i, m in enumerate([1.0, 1.2]):
        store.append({"created": f"r{i}", "commit": f"c{i}"},
                     [row("t::a", "decode", m), row("t::a", "decode", 9.0 + i, key="cuda-b"), row("t::b", "prefill", 5.0 + i)])
    keys = [("t::a", "decode", "cpu-a"), ("t::a", "decode", "cuda-b"), ("t::b", "prefill", "cpu-a"), missing]
    many = store.series_many(keys + keys[:1])  # a key asked twice is read once
    assert many == {k: store.series(*k) for k in keys}
    assert [p.median_ms for p in many[keys[1]]] == [9.0, 10.0]


def test_trends_for_a_report_use_one_batch_query_or_the_two_method_protocol(tmp_path):
    from pytest_llmcycle.reports.outputs import _trends

    store = SQLiteHistory(tmp_path / "h.sqlite")
    results = [row("t::a", "decode", 1.0), row("t::a", "decode", 50.0, kind=COLD)]
    store.append({"created": "r0"}, results)

    class TwoMethods:  # a team's own store: append and series only
        def append(self, run_meta, rows):
            return 0

        def series(self, nodeid, stage, device_key=None):
            return store.series(nodeid, stage, device_key)

    assert _trends(store, results) == _trends(TwoMethods(), results) == {("t::a", "decode"): store.series("t::a", "decode")}


def test_the_run_meta_is_stored_whole(tmp_path):
    store = SQLiteHistory(tmp_path / "h.sqlite")
    run_id = store.append({"created": "t", "commit": "abc", "settings": {"threshold": 0.25}}, [row("t::a", "s", 1.0)])
    con = sqlite3.connect(tmp_path / "h.sqlite")
    meta = con.execute("SELECT meta FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    con.close()
    assert '"threshold": 0.25' in meta and '"commit": "abc"' in meta


def test_history_command_shows_the_trend(tmp_path, capsys):
    store = SQLiteHistory(tmp_path / "h.sqlite")
    for m in (1.0, 1.5, 2.0):
        store.append({"created": "t"}, [row("t::a", "decode", m, outcome=vd.REGRESSED if m == 2.0 else vd.OK)])
    assert cli.main(["history", str(tmp_path / "h.sqlite")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "t::a" in ln)
    assert line.split()[2:5] == ["decode", "3", "1"] and "+100.0%" in line and "▁▅█" in line and line.endswith("regressed")
    assert cli.main(["history", str(tmp_path / "missing.sqlite")]) == 2
    (tmp_path / "junk.sqlite").write_text("not a database" * 100, encoding="utf-8")
    assert cli.main(["history", str(tmp_path / "junk.sqlite")]) == 2
    assert "not a history file" in capsys.readouterr().err


TIMED = """
def test_sum(llmcycle):
    llmcycle.measure("sum", lambda: sum(range(3000)))
"""


def test_runs_append_to_the_history_and_the_html_shows_the_trend(pytester):
    pytester.makepyfile(TIMED)
    opts = ["-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-history", "h.sqlite"]
    for _ in range(2):
        pytester.runpytest(*opts).assert_outcomes(passed=1)
    result = pytester.runpytest(*opts, "--llmcycle-report", "r.html")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmcycle: appended 2 row(s) to history *h.sqlite"])  # the stage and its cold call
    nodeid = "test_runs_append_to_the_history_and_the_html_shows_the_trend.py::test_sum"
    pts = SQLiteHistory(pytester.path / "h.sqlite").series(nodeid, "sum")
    assert len(pts) == 3 and all(p.median_ms > 0 for p in pts)
    assert "over the last 3 runs" in (pytester.path / "r.html").read_text(encoding="utf-8")


def test_an_unwritable_history_is_reported_and_does_not_fail_the_run(pytester):
    pytester.makepyfile(TIMED)
    (pytester.path / "h.sqlite").mkdir()  # a folder where the file should be
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-history", "h.sqlite")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["llmcycle: history *h.sqlite NOT written: *"])


def test_tensorboard_export_is_skipped_cleanly_without_tensorboard(pytester):
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("tensorboard is installed: the export itself is checked by test_tensorboard_export")
    pytester.makepyfile(TIMED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-tensorboard", "tb")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmcycle: --llmcycle-tensorboard: the tensorboard package is not installed*"])
    assert not (pytester.path / "tb").exists()


def test_tensorboard_export(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pytest_llmcycle.reports.outputs import export_tensorboard

    message, is_error = export_tensorboard(tmp_path / "tb", [row("t::a", "decode", 1.5)], {})
    assert not is_error and "exported" in message
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("t::a/decode/median_ms")] == [1.5]
