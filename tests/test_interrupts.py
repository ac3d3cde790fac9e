"""Ctrl-C at the end of a run, in real pytest processes (issue 15, item 4).

A SIGINT that lands inside session finish, while the reference workload is timed or while the
baseline file is replaced, keeps the entries of the tests that finished, or the summary says
exactly which were not written; never a traceback. The child's conftest holds session finish
at one of those two places (it sleeps there and leaves a marker file), so the signal lands
there deterministically; the moment within the hold is random.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llmcycle.storage.baseline import Baselines, Entry

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
FAST = ["--llmcycle-device", "cpu", "--llmcycle-budget", "0.05", "--llmcycle-min-rounds", "3", "-p", "no:cacheprovider", "-q"]

TESTS = """
import time

def test_a(llmcycle):
    llmcycle.measure("fwd", lambda: time.sleep(0.001))

def test_b(llmcycle):
    llmcycle.measure("fwd", lambda: time.sleep(0.001))
"""

#: HOLD=reference: timing the reference workload sleeps; HOLD=replace: replacing the baseline file does
CONFTEST = """
import os, time

def _hold():
    open(os.environ["MARKER"], "w").close()
    time.sleep(float(os.environ.get("HOLD_S", "30")))

def pytest_configure(config):
    if os.environ.get("HOLD") == "reference":
        from pytest_llmcycle.measure import machine
        real = machine.measure_reference
        def measure_reference(*args, **kwargs):
            _hold()
            return real(*args, **kwargs)
        machine.measure_reference = measure_reference
    elif os.environ.get("HOLD") == "replace":
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("baselines.json"):
                _hold()
            return real_replace(src, dst)
        os.replace = replace
"""

FINISHED = ["test_lat.py::test_a", "test_lat.py::test_b"]


def project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_lat.py").write_text(TESTS)
    return tmp_path


def interrupted_run(cwd: Path, hold: str, delay_s: float, *args: str) -> tuple[int, str]:
    """A pytest run given SIGINT ``delay_s`` after session finish reached the ``hold`` place."""
    marker = cwd / "holding"
    marker.unlink(missing_ok=True)
    p = subprocess.Popen(
        [sys.executable, "-m", "pytest", *FAST, *args], cwd=cwd, env={**ENV, "HOLD": hold, "MARKER": str(marker)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0]
        time.sleep(0.02)
    time.sleep(delay_s)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=90)
    return p.returncode, out


def stored(cwd: Path) -> dict:
    data = json.loads((cwd / ".llmcycle" / "baselines.json").read_text())
    ((_, dev),) = data["devices"].items()
    return dev


def temp_files(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / ".llmcycle").iterdir() if p.name.endswith(".tmp"))


@pytest.mark.timeout(240)
def test_ctrl_c_while_the_reference_is_timed_keeps_every_finished_tests_entries(tmp_path):
    cwd = project(tmp_path)
    rng = random.Random(15)
    for flags in (["--llmcycle-update"], ["--llmcycle-update-all"]):
        code, out = interrupted_run(cwd, "reference", rng.uniform(0.0, 0.5), *flags)
        assert "Traceback" not in out, out
        assert code == pytest.ExitCode.INTERRUPTED, out
        assert sorted(stored(cwd)["tests"]) == FINISHED  # written, without waiting on the reference
        assert "wrote 2 baseline entries" in out
        assert "interrupted (Ctrl-C) while timing the reference workload: the entries were written" in out
        assert "reference" not in stored(cwd)  # not stored half-timed
        assert temp_files(cwd) == []


@pytest.mark.timeout(240)
def test_ctrl_c_while_the_file_is_replaced_leaves_the_old_file_and_names_what_was_not_written(tmp_path):
    cwd = project(tmp_path)
    # a file with another test's entry and no reference workload (so no stored speed to compare the machine with)
    seed = Baselines(cwd / ".llmcycle" / "baselines.json")
    seed.set_entry("elsewhere", "other.py::test_x", "fwd", Entry(1.0, 1.0, 1.0, 3, (1.0, 1.0, 1.0)))
    (cwd / ".llmcycle").mkdir()
    (cwd / ".llmcycle" / "baselines.json").write_text(seed.dumps(), encoding="utf-8")
    before = (cwd / ".llmcycle" / "baselines.json").read_bytes()
    rng = random.Random(4)
    for _ in range(2):
        code, out = interrupted_run(cwd, "replace", rng.uniform(0.0, 0.5), "--llmcycle-update-all")
        assert "Traceback" not in out, out
        assert code == pytest.ExitCode.INTERRUPTED, out
        # the file is the old one, whole, and the summary names each stage that did not get in
        assert (cwd / ".llmcycle" / "baselines.json").read_bytes() == before
        assert "baselines NOT written for 2 stage(s): test_lat.py::test_a fwd, test_lat.py::test_b fwd" in out, out
        assert "wrote" not in out
        assert temp_files(cwd) == []


@pytest.mark.timeout(120)
def test_a_ctrl_c_that_only_skipped_the_reference_still_writes_the_reports(tmp_path):
    cwd = project(tmp_path)
    code, out = interrupted_run(cwd, "reference", 0.1, "--llmcycle-update", "--llmcycle-report", "r.json")
    assert "Traceback" not in out and code == pytest.ExitCode.INTERRUPTED, out
    assert sorted(stored(cwd)["tests"]) == FINISHED
    doc = json.loads((cwd / "r.json").read_text())
    assert sorted({r["nodeid"] for r in doc["results"]}) == FINISHED
