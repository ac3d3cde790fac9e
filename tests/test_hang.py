"""Stages that hang or run far past their budget end with a clear failure, not a stuck CI job,
and leave no timing lock held and no partial file behind."""
from __future__ import annotations

import json
import textwrap

import pytest

from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.fixture import StageDeadline
from pytest_llmcycle.run.session import DEFAULT_STAGE_TIMEOUT_S, RunState

FAST = ("--llmcycle-device", "cpu", "--llmcycle-budget", "0.05", "--llmcycle-min-rounds", "3", "-p", "no:cacheprovider")

#: a test that checks from another process that nobody holds the CPU's timing lock now
LOCK_IS_FREE = """
def test_lock_is_free():
    import subprocess, sys
    from pytest_llmcycle.measure.lock import timing_lock_path
    code = "import sys; from filelock import FileLock; FileLock(sys.argv[1]).acquire(timeout=0)"
    assert subprocess.run([sys.executable, "-c", code, timing_lock_path("cpu")]).returncode == 0
"""


@pytest.fixture(autouse=True)
def private_locks(tmp_path_factory, monkeypatch):
    """Timing locks live in the temp folder, shared by every run on the machine: give these
    runs their own, so that a lock held by some other run never reads as one left held here."""
    import tempfile

    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("TMPDIR", str(folder))  # subprocesses
    monkeypatch.setattr(tempfile, "tempdir", str(folder))  # this process (pytester's in-process runs)


def test_the_default_limit_is_generous_and_follows_the_budget():
    run = RunState(Settings(), ".")
    assert run.stage_limit_s(1.0) == DEFAULT_STAGE_TIMEOUT_S == 300
    assert run.stage_limit_s(10.0) == 600  # 60x a long budget
    assert RunState(Settings(), ".", stage_timeout_s=2.5).stage_limit_s(10.0) == 2.5
    assert RunState(Settings(), ".", stage_timeout_s=0).stage_limit_s(1.0) is None  # 0: no limit


def test_without_a_limit_the_workload_is_not_wrapped():
    def fn():
        return 1

    assert StageDeadline("s", None).wrap(fn) is fn


@pytest.mark.timeout(60)
def test_a_stage_far_past_its_budget_is_stopped_at_the_limit_with_a_clear_failure(pytester):
    pytester.makepyfile(
        test_slow=textwrap.dedent(
            """
        import time
        from pathlib import Path
        calls = Path("calls")

        def test_slow(llmcycle):
            def work():
                with calls.open("a") as f:
                    f.write("x")
                time.sleep(0.2)
            llmcycle.measure("fwd", work)  # 20 rounds of 0.2 s: 4+ s without a limit

        def test_after(llmcycle):
            llmcycle.measure("fwd", lambda: time.sleep(0.001))
        """
        )
        + LOCK_IS_FREE
    )
    result = pytester.runpytest(*FAST, "--llmcycle-min-rounds", "20", "--llmcycle-stage-timeout", "0.5")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*llmcycle: stage 'fwd' ran past its hard limit of 0.5 s and was stopped*--llmcycle-stage-timeout SECONDS*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert len((pytester.path / "calls").read_text()) < 20  # stopped early, not after every round


@pytest.mark.timeout(60)
def test_a_block_stage_past_the_limit_is_stopped_between_runs(pytester):
    pytester.makepyfile(
        """
        import time
        from pathlib import Path

        def test_block(llmcycle):
            for i in range(200):
                Path("runs").write_text(str(i + 1))
                with llmcycle.stage("block"):
                    time.sleep(0.02)
        """
    )
    result = pytester.runpytest(*FAST, "--llmcycle-stage-timeout", "0.3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stage 'block' ran past its hard limit of 0.3 s*"])
    assert int((pytester.path / "runs").read_text()) < 200


def test_the_limit_can_be_set_in_the_ini_file_and_refuses_nonsense(pytester):
    pytester.makeini("[pytest]\nllmcycle_stage_timeout = 0.2\n")
    pytester.makepyfile("import time\ndef test_a(llmcycle):\n    llmcycle.measure('s', lambda: time.sleep(0.1))\n")
    pytester.runpytest(*FAST, "--llmcycle-min-rounds", "10").assert_outcomes(failed=1)
    result = pytester.runpytest(*FAST, "--llmcycle-stage-timeout", "soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmcycle-stage-timeout='soon' is not valid: expected seconds >= 0 (0: no limit)*"])


HANGS = (
    textwrap.dedent(
        """
    import time

    def test_1_fast(llmcycle):
        llmcycle.measure("fwd", lambda: time.sleep(0.001))

    def test_2_hangs(llmcycle):
        llmcycle.measure("fwd", lambda: time.sleep(3600))  # one call that never returns
    """
    )
    + LOCK_IS_FREE.replace("def test_lock_is_free", "def test_3_lock_is_free")
    + """
def test_4_fast(llmcycle):
    llmcycle.measure("fwd", lambda: time.sleep(0.001))
"""
)


def entries(pytester) -> list[str]:
    path = pytester.path / ".llmcycle" / "baselines.json"
    if not path.exists():
        return []
    ((key, dev),) = json.loads(path.read_text())["devices"].items()
    return sorted(dev["tests"])


def temp_files(pytester) -> list:
    return [p.name for p in pytester.path.rglob("*.tmp")]


@pytest.mark.timeout(90)
def test_a_call_that_never_returns_is_ended_by_pytest_timeout_and_the_run_goes_on(pytester):
    pytester.makepyfile(test_hangs=HANGS)
    result = pytester.runpytest_subprocess(*FAST, "--timeout", "3", "--llmcycle-update")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*Timeout*", "*FAILED*test_2_hangs*"])
    # the hung stage let go of the timing lock (test_3 checked from another process), the
    # finished stages were written, the hung one not, and no partial file is left
    assert entries(pytester) == ["test_hangs.py::test_1_fast", "test_hangs.py::test_4_fast"]
    assert temp_files(pytester) == []


@pytest.mark.timeout(90)
def test_pytest_timeouts_thread_method_kills_the_run_before_anything_is_written(pytester):
    # documented: the thread method ends the process at once, so no update of that run is
    # written (use the signal method, pytest-timeout's default on POSIX, to keep them)
    pytester.makepyfile(test_hangs=HANGS)
    result = pytester.runpytest_subprocess(*FAST, "--timeout", "3", "--timeout-method", "thread", "--llmcycle-update")
    assert result.ret != 0
    assert "Timeout" in result.stdout.str() + result.stderr.str()
    assert entries(pytester) == []
    assert temp_files(pytester) == []
