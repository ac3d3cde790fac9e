"""pytest-xdist: workers take turns on a device, and the controller sees the whole run.

The user stories run real ``pytest -n 2`` sessions (pytester subprocesses); the GPU pinning
is tested with a fake device count, since this machine has no GPU.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from pytest_llmcycle.measure import device as devmod
from pytest_llmcycle.run import xdist
from pytest_llmcycle.storage.baseline import Entry
from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.results import CYCLE, StageResult
from pytest_llmcycle.run.session import RunState
from pytest_llmcycle.engine.verdict import Verdict

FAST = ("--llmcycle-device", "cpu", "--llmcycle-budget", "0.05", "--llmcycle-min-rounds", "3", "-p", "no:cacheprovider")


# ----------------------------------------------------------------------------- GPU pinning (fake counts)


@pytest.mark.parametrize(
    "spec, worker, count, expected",
    [
        ("cuda", 0, 4, "cuda:0"),
        ("cuda", 3, 4, "cuda:3"),
        ("cuda", 5, 4, "cuda:1"),  # more workers than GPUs: they share, round robin
        ("auto", 2, 2, "cuda:0"),
        ("cuda:2", 0, 4, "cuda:2"),  # an explicit GPU is the user's choice
        ("cpu", 1, 4, "cpu"),
        ("mps", 1, 0, "mps"),
        ("auto", 1, 0, "auto"),  # no CUDA: auto resolves as usual (MPS or CPU)
        ("cuda", 1, 0, "cuda"),  # no CUDA: resolve_device says so
    ],
)
def test_worker_k_gets_gpu_k_mod_the_gpu_count(spec, worker, count, expected):
    assert devmod.worker_device(spec, worker, count) == expected


def test_a_pinned_worker_resolves_its_gpu_and_makes_it_current(monkeypatch):
    import torch

    chosen = []
    monkeypatch.setattr(devmod, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr("pytest_llmcycle.measure.device.resolve_device", lambda spec: spec)  # no CUDA here to check
    run = RunState(Settings(device="cuda"), ".", worker_index=3, worker_count=4, pin_gpus=True)
    assert run.device == "cuda:1"
    assert chosen == ["cuda:1"]
    # without the option, or outside xdist, nothing is pinned
    assert RunState(Settings(device="cuda"), ".", worker_index=3, pin_gpus=False).device == "cuda"
    assert RunState(Settings(device="cuda"), ".", worker_index=None, pin_gpus=True).device == "cuda"


def test_the_worker_number_comes_from_xdist(pytester):
    class Config:
        workerinput = {"workerid": "gw7", "workercount": 8}

    assert xdist.worker_of(Config()) == (7, 8)
    assert xdist.worker_of(object()) == (None, 1)


# ----------------------------------------------------------------------------- worker -> controller


def a_result(**kw) -> StageResult:
    base = Entry(10.0, 9.5, 10.5, 40, (9.5, 10.0, 10.5), env={"threads": 2}, extra={"workload": "w"})
    v = Verdict("regressed", 0.1, 0.12, ratio=1.3, ci=(1.2, 1.4), p_value=1e-5, reason="+30.0% slower")
    d = dict(nodeid="t.py::test[a b]", stage="forward", device_key="cpu-x", verdict=v, median_ms=13.0, q1_ms=12.5,
             q3_ms=13.5, n=50, baseline=base, cold_ms=40.0, remeasure_median_ms=13.1, spent_s=0.4,
             samples_ms=(12.5, 13.0, 13.5), env={"threads": 2}, counters={"tokens": 32}, updated=True)
    d.update(kw)
    return StageResult(**d)


def test_a_result_survives_to_dict_and_back():
    r = a_result()
    wire = json.loads(json.dumps({**r.to_dict(), "baseline": asdict(r.baseline)}))
    assert StageResult.from_dict(wire) == r
    # to_dict alone keeps the baseline's median: enough for the summary table
    back = StageResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.baseline.median_ms == 10.0 and back.verdict == r.verdict and back.counters == {"tokens": 32}
    cycle = a_result(kind=CYCLE, baseline=None, samples_ms=())
    assert StageResult.from_dict(cycle.to_dict()) == cycle


def test_a_workers_payload_carries_whatever_a_test_counted(tmp_path):
    worker = RunState(Settings(), tmp_path)
    worker.adopt_device("cpu", "cpu-x")
    worker.results = [a_result(counters={"tokens": np.int64(32), "ids": {1, 2}}), a_result(nodeid="t.py::a")]
    worker.written = ["cpu-x t.py::a forward"]
    worker.write_error = "baselines NOT written: disk full"
    controller = RunState(Settings(), tmp_path)
    xdist.load_into(controller, xdist.dump_run(worker), "gw1")
    assert [r.nodeid for r in controller.results] == ["t.py::a", "t.py::test[a b]"]
    assert controller.results[1].counters == {"tokens": 32, "ids": [1, 2]}
    assert controller.results[1].baseline == worker.results[0].baseline
    assert controller.written == ["cpu-x t.py::a forward"]
    assert controller.write_error == "gw1: baselines NOT written: disk full"
    assert controller.device_key == "cpu-x"


# ----------------------------------------------------------------------------- real -n 2 runs


@pytest.fixture
def private_locks(tmp_path_factory, monkeypatch):
    """The workers' timing locks in a folder of their own (not shared with other runs here)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("locks")))

#: Each timed call claims a marker file exclusively for a moment: a second process inside a
#: timed section at the same time finds it taken and logs an overlap.
TIMED = """
import os, time, pytest
from pathlib import Path

LOG = Path(os.environ["LLMCYCLE_TEST_DIR"])

def claimed():
    try:
        fd = os.open(LOG / "inside", os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        with open(LOG / "overlaps", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.001)
        return
    os.close(fd)
    time.sleep(0.001)
    os.unlink(LOG / "inside")

def barrier(name):
    # both workers reach their first measure() together (a barrier outside any timed section)
    (LOG / f"arrived-{name}").touch()
    deadline = time.monotonic() + 30
    while len(list(LOG.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

@pytest.mark.xdist_group("a")
@pytest.mark.parametrize("i", range(3))
def test_a(llmcycle, i):
    if i == 0:
        barrier("a")
    llmcycle.measure("fwd", claimed)

@pytest.mark.xdist_group("b")
@pytest.mark.parametrize("i", range(3))
def test_b(llmcycle, i):
    if i == 0:
        barrier("b")
    llmcycle.measure("fwd", claimed)
"""

NO_LOCK_CONFTEST = """
import contextlib, os
if os.environ.get("LLMCYCLE_NO_LOCK"):
    from pytest_llmcycle.run.session import RunState
    RunState.timing_lock = lambda self: contextlib.nullcontext()
"""


def overlaps(pytester) -> int:
    log = pytester.path / "overlaps"
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lock", [True, False], ids=["with-lock", "control-without-lock"])
def test_timed_sections_on_one_device_never_overlap_across_workers(pytester, monkeypatch, private_locks, lock):
    pytester.makepyfile(test_timed=TIMED)
    pytester.makeconftest(NO_LOCK_CONFTEST)
    monkeypatch.setenv("LLMCYCLE_TEST_DIR", str(pytester.path))
    if not lock:
        monkeypatch.setenv("LLMCYCLE_NO_LOCK", "1")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", *FAST, "--llmcycle-budget", "0.2")
    result.assert_outcomes(passed=6)
    if lock:
        assert overlaps(pytester) == 0
    else:  # the control shows the check would catch an overlap
        assert overlaps(pytester) > 0


UNTIMED_ALONGSIDE = """
import os, time, pytest
from pathlib import Path
from filelock import FileLock, Timeout
from pytest_llmcycle.measure.lock import timing_lock_path

LOG = Path(os.environ["LLMCYCLE_TEST_DIR"])

def wait_for(name):
    deadline = time.monotonic() + 30
    while not (LOG / name).exists():
        assert time.monotonic() < deadline, f"{name} never came"
        time.sleep(0.01)

@pytest.mark.xdist_group("timed")
def test_timed(llmcycle):
    first = []
    def work():
        if not first:  # inside the timed section: wait until the other worker ran a plain test
            first.append(1)
            (LOG / "timing").touch()
            wait_for("plain-ran")
        time.sleep(0.001)
    llmcycle.measure("fwd", work)

@pytest.mark.xdist_group("plain")
def test_plain():
    wait_for("timing")
    try:  # the device's timing lock is held by the other worker right now...
        FileLock(timing_lock_path("cpu")).acquire(timeout=0)
        held = False
    except Timeout:
        held = True
    (LOG / "plain-ran").write_text(str(held))  # ...and this untimed test ran anyway
"""


@pytest.mark.timeout(120)
def test_untimed_tests_run_while_another_worker_is_timing(pytester, monkeypatch, private_locks):
    pytester.makepyfile(test_mixed=UNTIMED_ALONGSIDE)
    monkeypatch.setenv("LLMCYCLE_TEST_DIR", str(pytester.path))
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", *FAST)
    result.assert_outcomes(passed=2)
    assert (pytester.path / "plain-ran").read_text() == "True"


SUITE = """
import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_stage(llmcycle, i):
    slow = float(os.environ.get("SLOW_FACTOR", "1")) if i == 3 else 1.0
    llmcycle.measure("fwd", lambda: time.sleep(0.002 * slow))

def test_untimed():
    pass
"""


@pytest.mark.timeout(120)
def test_every_workers_results_reach_one_summary_one_report_and_the_baseline_file(pytester, monkeypatch):
    pytester.makepyfile(test_suite=SUITE)
    baseline = pytester.path / ".llmcycle" / "baselines.json"
    baseline.parent.mkdir()
    baseline.write_text(json.dumps({"schema": 1, "devices": {"cpu-other": {"tests": {"x.py::t": {"s": {"median_ms": 1.0, "samples_ms": [1.0]}}}}}}))
    result = pytester.runpytest_subprocess("-n", "2", *FAST, "--llmcycle-update", "--llmcycle-report", "r.json")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["*llmcycle: cpu-*", "*wrote 6 baseline entries to*baselines.json"])
    assert result.stdout.str().count("new (updated)") == 6
    data = json.loads(baseline.read_text())
    (key,) = [k for k in data["devices"] if k != "cpu-other"]
    assert sorted(data["devices"][key]["tests"]) == [f"test_suite.py::test_stage[{i}]" for i in range(6)]
    assert "reference" in data["devices"][key]
    assert data["devices"]["cpu-other"]["tests"]["x.py::t"]["s"]["median_ms"] == 1.0  # others' entries kept
    report = json.loads((pytester.path / "r.json").read_text())
    stages = sorted(r["nodeid"] for r in report["results"] if r["kind"] == "stage")
    assert stages == [f"test_suite.py::test_stage[{i}]" for i in range(6)]

    # a check run under -n 2: one summary with every worker's verdicts; a regression fails its test
    monkeypatch.setenv("SLOW_FACTOR", "4")
    # enough samples to be significant; no machine check: the stage sleeps, so a busy machine
    # (this suite under -n 2) slows the reference workload but not the stage, and the verdict
    # would rightly be "inconclusive" (tests/test_verdict.py covers that rule)
    result = pytester.runpytest_subprocess(
        "-n", "2", *FAST, "--llmcycle-min-rounds", "10", "-o", "llmcycle_machine_check=false"
    )
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_stage?3?*"])
    table = [line for line in result.stdout.lines if line.startswith("test_suite.py::test_stage[") and "(cold)" not in line]
    assert len(table) == 6
    assert sum("regressed" in line for line in table) == 1
    assert data == json.loads(baseline.read_text())  # a check run writes nothing


def test_a_run_without_xdist_registers_nothing_of_it(pytester):
    pytester.makepyfile("def test_x(request):\n    assert not request.config.pluginmanager.has_plugin('llmcycle-xdist-worker')\n"
                        "    assert not request.config.pluginmanager.has_plugin('llmcycle-xdist-controller')\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_gpu_pinning_on_a_machine_without_gpus_times_on_the_cpu(pytester):
    if devmod.cuda_device_count():
        pytest.skip("this machine has a GPU")
    pytester.makepyfile("import time\ndef test_x(llmcycle):\n    llmcycle.measure('s', lambda: time.sleep(0.001))\n"
                        "    assert str(llmcycle._run.device) == 'cpu'\n")
    args = [a for a in FAST if a not in ("--llmcycle-device", "cpu")]
    pytester.runpytest_subprocess("-n", "2", *args, "--llmcycle-xdist-gpus", "--llmcycle-device", "auto").assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_a_workers_failed_baseline_write_fails_the_run_and_is_shown_once(pytester):
    pytester.makeconftest(
        "import pytest_llmcycle.storage.baseline as s\n"
        "def broken(*a, **k):\n    raise OSError('disk full')\n"
        "s.merge_into_file = broken\n"
    )
    pytester.makepyfile(test_w="import time\ndef test_x(llmcycle):\n    llmcycle.measure('s', lambda: time.sleep(0.001))\n")
    result = pytester.runpytest_subprocess("-n", "2", *FAST, "--llmcycle-update")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["llmcycle: gw?: baselines NOT written: disk full"])


@pytest.mark.timeout(120)
def test_workers_update_one_file_per_module_and_the_controller_counts_every_file(pytester):
    pytester.makepyfile(test_suite=SUITE, test_other=SUITE.replace("def test_untimed", "def test_untimed_too"))
    # about routing entries to files: two workers competing for 2 cores read as a busy machine to
    # the recording check (a reference another worker stored seconds before), so it is off here
    result = pytester.runpytest_subprocess(
        "-n", "2", *FAST, "--llmcycle-update", "--llmcycle-baseline", "perf/{module}.json", "-o", "llmcycle_machine_check=false"
    )
    result.assert_outcomes(passed=14)
    result.stdout.fnmatch_lines(["*wrote 12 baseline entries to 2 files (*perf/{module}.json)"])
    for module in ("test_suite", "test_other"):
        data = json.loads((pytester.path / "perf" / f"{module}.json").read_text())
        (dev,) = data["devices"].values()
        assert sorted(dev["tests"]) == sorted(f"{module}.py::test_stage[{i}]" for i in range(6))
        assert "reference" in dev
