"""The whole flow as a user meets it: record, compare, regress, improve, strict, update, skip.

Each story writes a small project, runs pytest on it twice or more (record, then check) and
asserts on outcomes, summary lines and the baseline file. The project's tests time their stages
with a fake clock (``clock`` fixture in its conftest) that moves only when the measured code
runs, by a fixed duration with a small deterministic jitter; a slowdown is switched on between
runs with an environment variable. So every verdict here is exact and nothing can flake.
"""
from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET

import pytest

# Inline pytester runs drop the modules first imported inside them: torch cannot be loaded twice,
# and re-importing (and assertion-rewriting) the rest would cost seconds per run.
import hypothesis  # noqa: F401,E402
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import torch  # noqa: E402

BASELINE = ".llmcycle/baselines.json"

#: the project's conftest: a fake clock for the llmcycle fixture, slowdowns read from the environment
CONFTEST = '''
import os
import pytest

MS = 1_000_000


class FakeClock:
    """Nanoseconds that pass only while measured code runs."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t

    def work(self, ms, stage=None, cold_ms=None, wobble=0.02):
        """A function that "takes" ``ms`` (times SLOW_<STAGE> from the environment) per call."""
        factor = float(os.environ.get("SLOW_" + stage.upper(), "1")) if stage else 1.0
        calls = [0]

        def fn():
            i = calls[0]
            calls[0] += 1
            if i == 0 and cold_ms is not None:
                self.t += int(cold_ms * MS)
                return
            self.t += int(ms * MS * factor * (1 + wobble * ((i * 7) % 11 - 5) / 5))

        return fn

    def spend(self, ms, stage, i):
        """Advance by ``ms`` (times SLOW_<STAGE>) as the i-th run of a block would."""
        factor = float(os.environ.get("SLOW_" + stage.upper(), "1"))
        self.t += int(ms * MS * factor * (1 + 0.02 * ((i * 7) % 11 - 5) / 5))


@pytest.fixture
def clock(llmcycle):
    c = FakeClock()
    llmcycle.clock = c
    return c


@pytest.fixture(autouse=True)
def machine_speed(monkeypatch):
    """MACHINE_FACTOR in the environment stands in for timing the reference workload."""
    if "MACHINE_FACTOR" in os.environ:
        from pytest_llmcycle.run.session import RunState

        monkeypatch.setattr(RunState, "machine_factor", lambda self, sample_s=0.0, nodeid=None: float(os.environ["MACHINE_FACTOR"]))
'''

#: rounds run to the budget (no early stop): the jitter's whole cycle is sampled, so medians are exact;
#: the early stop's own stories are in tests/test_sequential.py
INI = """
[pytest]
llmcycle_budget = 0.05
llmcycle_device_key = ci-runner
llmcycle_machine_check = false
llmcycle_early_stop = false
"""

TWO_TESTS = """
def test_forward(llmcycle, clock):
    llmcycle.measure("forward", clock.work(2.0, "forward"))


def test_generate(llmcycle, clock):
    llmcycle.measure("prefill", clock.work(4.0, "prefill"))
    llmcycle.measure("decode", clock.work(1.0, "decode"))
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def baseline_text(pytester) -> str:
    return (pytester.path / BASELINE).read_text()


def stored(pytester, nodeid: str, stage: str) -> dict:
    return json.loads(baseline_text(pytester))["devices"]["ci-runner"]["tests"][nodeid][stage]


def record(pytester, *args):
    result = pytester.runpytest("--llmcycle-update", *args)
    assert result.ret == 0, result.stdout.str()
    return result


# ----------------------------------------------------------------------------- record and compare


def test_a_first_run_reports_new_stages_and_passes_without_writing(project):
    project.makepyfile(test_model=TWO_TESTS)
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*llmcycle: ci-runner, * thread(s)*",
            "test *stage *baseline *current *change *verdict",
            "*test_model.py::test_forward*forward *-*2 ms*new",
            "*test_model.py::test_generate*cycle T = prefill + decode*new",
        ]
    )
    assert not (project.path / BASELINE).exists()


def test_record_then_an_unchanged_check_passes_and_leaves_the_file_alone(project):
    project.makepyfile(test_model=TWO_TESTS)
    result = record(project)
    result.stdout.fnmatch_lines(["*forward*new (updated)*", f"llmcycle: wrote 3 baseline entries to *{BASELINE}"])
    before = baseline_text(project)
    entry = stored(project, "test_model.py::test_forward", "forward")
    assert entry["median_ms"] == 2.0 and entry["unit"] == "call" and entry["n"] >= 10

    result = project.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_forward*forward *2 ms*2 ms*+0.0%*ok", "*cycle T = prefill + decode*5 ms*5 ms*+0.0%*ok"])
    result.stdout.no_fnmatch_line("*wrote*")
    assert baseline_text(project) == before


def test_a_regression_fails_that_test_only_with_everything_needed_to_act(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_forward _*",
            "llmcycle: stage 'forward' regressed on ci-runner",
            "  baseline  2 ms (IQR 1.98 ms .. 2.02 ms, n=*)",
            "  current   2.6 ms (IQR * .. *, n=*); first measurement +30.0%, confirmed by a re-measure",
            "  change    +30.0% (95% CI +* .. +*), threshold 10%, Mann-Whitney U p=*e-* (confidence *%)",
            "  to accept the new numbers: pytest test_model.py::test_forward --llmcycle-update",
            "*FAILED test_model.py::test_forward*",
        ]
    )
    result.stdout.no_fnmatch_line("*FAILED test_model.py::test_generate*")
    # judged in the test's own call phase: no traceback into the plugin, just the message
    result.stdout.no_fnmatch_line("*plugin.py*")


def test_the_failure_is_a_junit_failure_of_that_test(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    result = project.runpytest("--junitxml=report.xml")
    result.assert_outcomes(passed=1, failed=1)
    cases = {c.get("name"): c for c in ET.parse(project.path / "report.xml").getroot().iter("testcase")}
    failure = cases["test_forward"].find("failure")
    assert failure is not None
    assert "stage 'forward' regressed on ci-runner" in failure.get("message")
    assert "pytest test_model.py::test_forward --llmcycle-update" in failure.text
    assert cases["test_generate"].find("failure") is None
    props = [(p.get("name"), p.get("value")) for p in cases["test_forward"].iter("property")]
    assert any("forward" in name and "regressed" in value for name, value in props)


def test_the_accept_command_in_the_message_records_the_new_numbers(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    failed = project.runpytest()
    line = next(x for x in failed.stdout.lines if "to accept the new numbers:" in x)
    command = shlex.split(line.split("to accept the new numbers:")[1])
    assert command[0] == "pytest"
    accepted = project.runpytest(*command[1:])
    accepted.assert_outcomes(passed=1)
    accepted.stdout.fnmatch_lines(["*forward*regressed (updated)*", "*wrote 1 baseline entry*"])
    assert stored(project, "test_model.py::test_forward", "forward")["median_ms"] == 2.6
    project.runpytest().assert_outcomes(passed=2)


def test_the_summary_lists_regressions_first(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_DECODE", "2.0")
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*-- llmcycle: ci-runner*",
            "test *stage *baseline*",
            "*test_generate*prefill *ok",
            "*test_generate*decode *1 ms*2 ms*+100.0%*regressed",
            "*test_generate*cycle T*regressed",
            "*test_forward*forward *ok",
        ]
    )


def test_a_speedup_is_improved_passes_and_says_how_to_record_it(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "0.7")
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_forward*forward *2 ms*1.4 ms*-30.0%*improved",
            "llmcycle: 1 test(s) faster than their baseline; to record it: pytest test_model.py::test_forward --llmcycle-update",
        ]
    )
    # --llmcycle-update takes the improvement and only it
    before = stored(project, "test_model.py::test_generate", "prefill")
    record(project).stdout.fnmatch_lines(["*forward*improved (updated)*", "*wrote 1 baseline entry*"])
    assert stored(project, "test_model.py::test_forward", "forward")["median_ms"] == 1.4
    assert stored(project, "test_model.py::test_generate", "prefill") == before


def test_a_slowdown_within_the_threshold_passes(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.05")
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*forward *2 ms*2.1 ms*+5.0%*ok"])


def test_the_threshold_is_a_setting(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.05")
    tight = project.runpytest("--llmcycle-threshold", "0.025")
    tight.assert_outcomes(passed=1, failed=1)
    tight.stdout.fnmatch_lines(["  change    +5.0% (95% CI *), threshold 2.5%, Mann-Whitney U*"])
    project.runpytest("--llmcycle-threshold", "0.5").assert_outcomes(passed=2)


def test_a_marker_sets_one_tests_threshold(project, monkeypatch):
    project.makepyfile(
        test_model="""
        import pytest

        @pytest.mark.llmcycle(threshold=0.5)
        def test_lenient(llmcycle, clock):
            llmcycle.measure("forward", clock.work(2.0, "forward"))

        def test_default(llmcycle, clock):
            llmcycle.measure("forward", clock.work(2.0, "forward"))
        """
    )
    record(project, "--strict-markers")
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    result = project.runpytest("--strict-markers")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_model.py::test_default*"])


def test_noise_wider_than_the_threshold_is_reported_as_the_effective_threshold(project, monkeypatch):
    project.makepyfile(
        test_model="""
        def test_noisy(llmcycle, clock):
            llmcycle.measure("forward", clock.work(2.0, "forward", wobble=0.5))
        """
    )
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.12")
    project.runpytest().assert_outcomes(passed=1)  # +12 % is inside this stage's own noise
    monkeypatch.setenv("SLOW_FORWARD", "2.0")
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["  change    +*, threshold 10% (gated at *%: the stage's own noise is wider)*"])


# ----------------------------------------------------------------------------- re-measure


RECORDED = """
import os
from pytest_llmcycle.measure.timing import Measurement


def around(ms):
    return Measurement(samples_ns=tuple(ms * 1e6 * (1 + 0.01 * (i % 5 - 2)) for i in range(30)))


def test_forward(llmcycle):
    calls = []

    def remeasure():
        calls.append(1)
        return around(float(os.environ.get("SECOND_MS", "2.0")))

    llmcycle.record("forward", around(float(os.environ.get("FIRST_MS", "2.0"))), remeasure=remeasure)
    print("REMEASURED", len(calls))
"""


def test_a_regression_is_re_measured_and_fails_only_when_confirmed(project, monkeypatch):
    project.makepyfile(test_model=RECORDED)
    record(project, "-s").stdout.fnmatch_lines(["*REMEASURED 0*"])

    monkeypatch.setenv("FIRST_MS", "2.6")
    monkeypatch.setenv("SECOND_MS", "2.6")
    confirmed = project.runpytest("-s")
    confirmed.assert_outcomes(failed=1)
    confirmed.stdout.fnmatch_lines(["*REMEASURED 1*", "*first measurement +30.0%, confirmed by a re-measure*"])

    monkeypatch.setenv("SECOND_MS", "2.0")
    fluke = project.runpytest("-s")
    fluke.assert_outcomes(passed=1)
    fluke.stdout.fnmatch_lines(["*REMEASURED 1*", "*forward *2 ms*2 ms*+0.0%*inconclusive"])


def test_an_unchanged_stage_is_not_re_measured(project, monkeypatch):
    project.makepyfile(test_model=RECORDED)
    record(project)
    monkeypatch.setenv("SECOND_MS", "9.0")
    result = project.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*REMEASURED 0*", "*forward*ok"])


def test_remeasure_false_fails_on_the_first_measurement(project, monkeypatch):
    project.makepyfile(test_model=RECORDED.replace("def test_forward", "import pytest\n@pytest.mark.llmcycle(remeasure=False)\ndef test_forward"))
    record(project)
    monkeypatch.setenv("FIRST_MS", "2.6")
    result = project.runpytest("-s")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*REMEASURED 0*"])


# ----------------------------------------------------------------------------- machine speed


def test_a_slower_machine_is_normalised_away(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    monkeypatch.setenv("MACHINE_FACTOR", "1.3")
    result = project.runpytest("-o", "llmcycle_machine_check=true")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*forward *2 ms*2.6 ms*+0.0%*ok [*]", "[*] normalised by the machine's speed*"])


def test_code_slower_than_the_machine_still_fails_and_says_the_machine_moved(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.8")
    monkeypatch.setenv("MACHINE_FACTOR", "1.3")
    result = project.runpytest("-o", "llmcycle_machine_check=true")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["  machine   this machine is 1.30x slower than when the baseline was recorded (times normalised by it)"])


def test_a_machine_far_off_its_baseline_speed_is_inconclusive_not_failed(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    for stage in ("forward", "prefill", "decode"):
        monkeypatch.setenv("SLOW_" + stage.upper(), "2.0")
    monkeypatch.setenv("MACHINE_FACTOR", "2.0")
    result = project.runpytest("-o", "llmcycle_machine_check=true")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*forward *+100.0%*inconclusive", "*cycle T*inconclusive"])


def test_a_reference_from_another_environment_is_never_used_and_is_re_recorded(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project, "--llmcycle-threads", "2")
    path = project.path / BASELINE
    data = json.loads(path.read_text())
    ref = data["devices"]["ci-runner"]["reference"]
    assert ref["env"]["threads"] == 2
    # a reference timed on 1 thread (and, to make its misuse certain, 100x slower than now)
    ref["env"]["threads"] = 1
    ref["median_ms"] *= 100
    for k in ("q1_ms", "q3_ms"):  # and its quartiles and samples: the loader checks they agree (issue 15)
        ref[k] *= 100
    ref["samples_ms"] = [x * 100 for x in ref["samples_ms"]]
    from pytest_llmcycle.storage.baseline import dumps

    path.write_text(dumps(data))

    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    result = project.runpytest("--llmcycle-threads", "2", "-o", "llmcycle_machine_check=true")
    # the stale reference would read "machine 0.01x: inconclusive" and hide the regression
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*machine speed*")

    record(project, "--llmcycle-threads", "2")
    ref = json.loads(path.read_text())["devices"]["ci-runner"]["reference"]
    assert ref["env"] == {"threads": 2, "torch": torch.__version__}


# ----------------------------------------------------------------------------- the cold call


def test_the_cold_call_is_reported_and_never_gated(project, monkeypatch):
    project.makepyfile(
        test_model="""
        import os

        def test_forward(llmcycle, clock):
            llmcycle.measure("forward", clock.work(2.0, "forward", cold_ms=float(os.environ.get("COLD_MS", "3"))))
        """
    )
    record(project)
    assert stored(project, "test_model.py::test_forward", "forward")["cold_ms"] == 3.0
    monkeypatch.setenv("COLD_MS", "300")  # 100x slower first call: a compile cache went cold
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*forward *2 ms*2 ms*ok", "*forward (cold)*-*300 ms*not gated"])


# ----------------------------------------------------------------------------- strict and environment


def test_new_stages_fail_under_strict(project):
    project.makepyfile(test_model=TWO_TESTS)
    result = project.runpytest("--llmcycle-strict")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: stage 'forward' on ci-runner has no usable baseline (new: no baseline yet: record one with --llmcycle-update) and --llmcycle-strict is set",
            "  to accept the new numbers: pytest test_model.py::test_forward --llmcycle-update",
        ]
    )
    project.makeini(INI + "llmcycle_strict = true\n")
    project.runpytest().assert_outcomes(failed=2)
    record(project)
    project.runpytest("--llmcycle-strict").assert_outcomes(passed=2)


def test_a_baseline_from_another_thread_count_is_not_comparable(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project, "--llmcycle-threads", "1")
    assert stored(project, "test_model.py::test_forward", "forward")["env"]["threads"] == 1
    monkeypatch.setenv("SLOW_FORWARD", "3.0")  # would regress, but cannot be compared
    result = project.runpytest("--llmcycle-threads", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*llmcycle: ci-runner, 2 thread(s)*", "*forward *not comparable"])
    strict = project.runpytest("--llmcycle-threads", "2", "--llmcycle-strict")
    strict.assert_outcomes(failed=2)
    strict.stdout.fnmatch_lines(["*has no usable baseline (not comparable: baseline recorded under a different environment (threads 1 -> 2)*"])
    # re-recording under the new environment makes it comparable again
    record(project, "--llmcycle-threads", "2").stdout.fnmatch_lines(["*wrote 3 baseline entries*"])
    monkeypatch.delenv("SLOW_FORWARD")
    result = project.runpytest("--llmcycle-threads", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*forward *5.99 ms*2 ms*-66.6%*improved"])


def test_a_baseline_from_another_dtype_is_not_comparable(project, monkeypatch):
    project.makepyfile(
        test_model="""
        import os

        def test_forward(llmcycle, clock):
            llmcycle.measure("forward", clock.work(2.0, "forward"), dtype=os.environ.get("DTYPE", "float32"))
        """
    )
    record(project)
    monkeypatch.setenv("DTYPE", "bfloat16")
    result = project.runpytest("--llmcycle-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*(dtype float32 -> bfloat16)*"])


def test_a_baseline_from_another_torch_version_is_not_comparable(project):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    path = project.path / BASELINE
    path.write_text(path.read_text().replace(f'"torch": "{torch.__version__}"', '"torch": "1.13.1"'))
    result = project.runpytest("--llmcycle-strict")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"*(torch 1.13.1 -> {torch.__version__})*"])


# ----------------------------------------------------------------------------- update


def test_update_writes_new_and_changed_entries_only(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    path = project.path / BASELINE
    # an entry for another runner, hand-written with five significant digits: must survive untouched
    data = json.loads(path.read_text())
    data["devices"]["gpu-runner"] = {"tests": {"test_model.py::test_forward": {"forward": {"median_ms": 0.12345, "samples_ms": [0.12345]}}}}
    from pytest_llmcycle.storage.baseline import dumps

    path.write_text(dumps(data))
    before = path.read_text()

    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    project.makepyfile(test_more="def test_extra(llmcycle, clock):\n    llmcycle.measure('forward', clock.work(1.0))\n")
    result = record(project)
    result.stdout.fnmatch_lines(["*wrote 2 baseline entries*"])
    result.stdout.fnmatch_lines(["*test_model.py::test_generate*prefill*ok", "*test_model.py::test_generate*decode*ok"])
    after = path.read_text()

    old, new = json.loads(before), json.loads(after)
    assert new["devices"]["gpu-runner"] == old["devices"]["gpu-runner"]
    assert new["devices"]["ci-runner"]["reference"] == old["devices"]["ci-runner"]["reference"]
    assert new["devices"]["ci-runner"]["tests"]["test_model.py::test_generate"] == old["devices"]["ci-runner"]["tests"]["test_model.py::test_generate"]
    assert new["devices"]["ci-runner"]["tests"]["test_model.py::test_forward"]["forward"]["median_ms"] == 2.6
    assert new["devices"]["ci-runner"]["tests"]["test_more.py::test_extra"]["forward"]["median_ms"] == 1.0
    # byte-identical, not just equal: the unrelated blocks appear verbatim in the new file
    for block in (
        before[before.index('    "gpu-runner"') :].split("\n  },\n  \"schema\"")[0],
        before[before.index('        "test_model.py::test_generate"') :].split("\n      }\n    },\n")[0],
        before[before.index('      "reference"') : before.index('      "tests"')],
    ):
        assert block in after
    changed = set(before.splitlines()) ^ set(after.splitlines())
    assert '"median_ms": 0.12345,' not in "".join(changed)


def test_update_without_changes_does_not_touch_the_file(project):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    path = project.path / BASELINE
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    result = record(project)
    result.stdout.no_fnmatch_line("*wrote*")
    result.stdout.fnmatch_lines(["*forward*ok"])
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_update_all_rewrites_every_measured_stage(project):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    result = project.runpytest("--llmcycle-update-all")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*forward*ok (updated)*", "*wrote 3 baseline entries*"])


def test_a_regression_under_update_passes_and_is_recorded(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project)
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    record(project).stdout.fnmatch_lines(["*forward*regressed (updated)*", "*wrote 1 baseline entry*"])
    project.runpytest().assert_outcomes(passed=2)


def test_a_baseline_path_can_be_chosen(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    record(project, "--llmcycle-baseline", "perf/latency.json")
    assert (project.path / "perf" / "latency.json").exists()
    assert not (project.path / BASELINE).exists()
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    project.runpytest("--llmcycle-baseline", "perf/latency.json").assert_outcomes(failed=1, passed=1)


ATTENTION_MODULE = """
def test_attention(llmcycle, clock):
    llmcycle.measure("attention", clock.work(1.5, "attention"))
"""


def test_one_baseline_file_per_test_module(project, monkeypatch):
    project.makepyfile(test_model=TWO_TESTS)
    project.mkpydir("perf")
    (project.path / "perf" / "test_attention.py").write_text(ATTENTION_MODULE)
    per_module = ("--llmcycle-baseline", ".llmcycle/{module}.json")
    record(project, *per_module).stdout.fnmatch_lines(["*wrote 4 baseline entries to 2 files (*{module}.json)"])
    folder = project.path / ".llmcycle"
    assert sorted(p.name for p in folder.iterdir()) == ["perf.test_attention.json", "test_model.json"]
    model = json.loads((folder / "test_model.json").read_text())["devices"]["ci-runner"]
    attention = json.loads((folder / "perf.test_attention.json").read_text())["devices"]["ci-runner"]
    assert sorted(model["tests"]) == ["test_model.py::test_forward", "test_model.py::test_generate"]
    assert sorted(attention["tests"]) == ["perf/test_attention.py::test_attention"]
    assert "reference" in model and model["reference"] == attention["reference"]  # timed once, in both files

    monkeypatch.setenv("SLOW_ATTENTION", "1.3")  # each module is judged against its own file
    result = project.runpytest(*per_module)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*FAILED perf/test_attention.py::test_attention*"])

    before = (folder / "test_model.json").read_text()  # re-recording one module touches only its file
    record(project, *per_module, "perf").stdout.fnmatch_lines(["*wrote 1 baseline entry to *perf.test_attention.json"])
    assert (folder / "test_model.json").read_text() == before
    project.runpytest(*per_module).assert_outcomes(passed=3)


def test_a_corrupt_module_file_fails_the_run_before_any_test_naming_it(project):
    project.makepyfile(test_model=TWO_TESTS)
    record(project, "--llmcycle-baseline", "perf/{module}.json")
    (project.path / "perf" / "test_model.json").write_text("{ not json")
    result = project.runpytest("--llmcycle-baseline", "perf/{module}.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*perf/test_model.json is not valid JSON*"])


def test_baselines_recorded_in_several_processes_allow_for_their_spread(project, monkeypatch):
    """A stage whose speed depends on the process (allocator, memory layout): record it in two."""
    project.makepyfile(test_model=TWO_TESTS)
    record(project)  # one process, the fast mode
    monkeypatch.setenv("SLOW_FORWARD", "1.2")  # a process in the slow mode, same code
    project.runpytest().assert_outcomes(failed=1, passed=1)  # one recording cannot know that mode

    record(project, "--llmcycle-update-append")  # ...so record that process too
    entry = stored(project, "test_model.py::test_forward", "forward")
    medians = entry["process_medians_ms"]  # the recording processes' medians, in order
    assert len(medians) == 2 and medians[1] == pytest.approx(medians[0] * 1.2, rel=0.01)

    for mode in ("1.0", "1.2", "1.25"):  # either mode, or a little past the slower one: ok
        monkeypatch.setenv("SLOW_FORWARD", mode)
        project.runpytest().assert_outcomes(passed=2)
    monkeypatch.setenv("SLOW_FORWARD", str(1.2 * 1.15))  # +15 % past the slowest process: caught
    result = project.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*stage *forward* regressed*", "*baseline*recorded in 2 processes, medians 2 ms .. 2.4 ms", "*gated at *: the baseline*s recording processes differ*"])


# ----------------------------------------------------------------------------- a failing measured function


def test_a_measured_function_that_raises_fails_with_its_own_traceback_and_records_nothing(project):
    project.makepyfile(
        test_model="""
        def test_broken(llmcycle, clock):
            llmcycle.measure("prefill", clock.work(1.0))

            def forward():
                raise ZeroDivisionError("the model is broken")

            llmcycle.measure("forward", forward)
        """
    )
    result = project.runpytest("--llmcycle-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '*raise ZeroDivisionError("the model is broken")*',
            "E*ZeroDivisionError: the model is broken",
            "test_model.py:5: ZeroDivisionError",
        ]
    )
    result.stdout.no_fnmatch_line("*wrote*")
    # issue 9: what was measured before the failure is shown (marked), never written
    result.stdout.fnmatch_lines(["*prefill*new (test failed)*", "*NOT written to the baseline: the stages of 1 failed test(s)*"])
    assert not (project.path / BASELINE).exists()


# ----------------------------------------------------------------------------- block-form stages


BLOCKS = """
import os

def test_decode(llmcycle, clock):
    runs = int(os.environ.get("RUNS", "20"))
    slow_runs = int(os.environ.get("SLOW_RUNS", str(runs)))
    for i in range(runs):
        with llmcycle.stage("decode"):
            clock.spend(1.0, "decode" if i < slow_runs else "none", i)
"""


def test_block_stages_record_and_pass_unchanged(project):
    project.makepyfile(test_model=BLOCKS)
    record(project)
    entry = stored(project, "test_model.py::test_decode", "decode")
    assert entry["n"] == 20 and entry["median_ms"] == 1.0
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*decode *1 ms*1 ms*+0.0%*ok"])


def test_a_block_regression_is_confirmed_by_its_second_half(project, monkeypatch):
    project.makepyfile(test_model=BLOCKS)
    record(project)
    monkeypatch.setenv("SLOW_DECODE", "1.3")
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["llmcycle: stage 'decode' regressed on ci-runner", "*confirmed by a re-measure*"])


def test_a_block_slowdown_in_its_first_half_only_is_not_confirmed(project, monkeypatch):
    project.makepyfile(test_model=BLOCKS)
    monkeypatch.setenv("RUNS", "30")
    record(project)
    monkeypatch.setenv("SLOW_DECODE", "1.3")
    monkeypatch.setenv("SLOW_RUNS", "20")  # runs 0-14 all slow, runs 15-29 mostly not
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*decode *inconclusive"])


def test_a_block_run_too_few_times_is_never_gated(project, monkeypatch):
    project.makepyfile(test_model=BLOCKS)
    monkeypatch.setenv("RUNS", "5")
    record(project)
    monkeypatch.setenv("SLOW_DECODE", "1.5")
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*decode *+50.0%*inconclusive"])


def test_a_block_shorter_than_the_clock_tick_still_writes_a_valid_file(project):
    project.makepyfile(
        test_model="""
        def test_tiny(llmcycle, clock):
            for i in range(12):
                with llmcycle.stage("tiny"):
                    clock.t += 1000 if i % 2 else 0  # every other run reads 0 ns: below the tick
        """
    )
    record(project)
    assert min(stored(project, "test_model.py::test_tiny", "tiny")["samples_ms"]) > 0
    result = project.runpytest()  # the file the plugin wrote must be one it accepts
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny *ok"])


def test_block_and_measured_stages_add_up_to_the_cycle(project, monkeypatch):
    project.makepyfile(
        test_model="""
        def test_cycle(llmcycle, clock):
            llmcycle.measure("prefill", clock.work(4.0, "prefill"))
            for i in range(20):
                with llmcycle.stage("decode"):
                    clock.spend(1.0, "decode", i)
        """
    )
    record(project)
    project.runpytest().stdout.fnmatch_lines(["*cycle T = prefill + decode*5 ms*5 ms*+0.0%*ok"])
    monkeypatch.setenv("SLOW_DECODE", "3.0")
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: stage 'decode' regressed on ci-runner",
            "llmcycle: cycle regressed on ci-runner",
            "  baseline  5 ms",
            "  current   7 ms",
            "  change    +40.0% (95% CI +* .. +*), threshold 10%, bootstrap p=*",
            "*decode*regressed",
            "*cycle T = prefill + decode*5 ms*7 ms*+40.0%*regressed",
        ]
    )


def test_a_stage_name_is_used_once_per_test(project):
    project.makepyfile(
        test_model="""
        import pytest

        def test_twice(llmcycle, clock):
            llmcycle.measure("forward", clock.work(1.0))
            with pytest.raises(ValueError, match="already measured"):
                llmcycle.measure("forward", clock.work(1.0))
            with pytest.raises(ValueError, match="already measured"):
                with llmcycle.stage("forward"):
                    pass

        def test_block_then_measure(llmcycle, clock):
            with llmcycle.stage("forward"):
                clock.spend(1.0, "forward", 0)
            with pytest.raises(ValueError, match="already"):
                llmcycle.measure("forward", clock.work(1.0))

        def test_names_must_be_non_empty(llmcycle, clock):
            with pytest.raises(ValueError, match="non-empty string"):
                llmcycle.measure(" ", clock.work(1.0))
            with pytest.raises(ValueError, match="non-empty string"):
                with llmcycle.stage(""):
                    pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=3)
    # one row, one entry: the block's single run, not a second "forward"
    assert len([x for x in result.stdout.lines if x.startswith("test_model.py::test_block_then_measure")]) == 1
    result.stdout.fnmatch_lines(["test_model.py::test_block_then_measure*forward *980 us*new"])


# ----------------------------------------------------------------------------- threads and device


THREADS = """
import torch

def test_threads(llmcycle, clock):
    torch.set_num_threads(2)
    seen = []

    def forward():
        seen.append(torch.get_num_threads())
        clock.t += 1_000_000

    llmcycle.measure("forward", forward)
    with llmcycle.stage("block"):
        seen.append(torch.get_num_threads())
    print("THREADS during", sorted(set(seen)), "after", torch.get_num_threads(), "fixture", llmcycle.threads)
"""


def test_threads_are_pinned_while_timing_restored_after_and_recorded(project):
    project.makepyfile(test_model=THREADS)
    before = torch.get_num_threads()
    try:
        result = record(project, "-s", "--llmcycle-threads", "1")
    finally:
        torch.set_num_threads(before)
    result.stdout.fnmatch_lines(["*THREADS during [[]1[]] after 2 fixture 1*", "*llmcycle: ci-runner, 1 thread(s)*"])
    assert stored(project, "test_model.py::test_threads", "forward")["env"]["threads"] == 1
    assert stored(project, "test_model.py::test_threads", "block")["env"]["threads"] == 1


DEVICE = """
import torch

def test_device(llmcycle):
    assert isinstance(llmcycle.device, torch.device)
    print("DEVICE", llmcycle.device, llmcycle.device_key)
"""


@pytest.mark.parametrize("flag", [[], ["--llmcycle-device", "auto"], ["--llmcycle-device", "cpu"]])
def test_the_device_is_chosen_by_option_and_exposed_on_the_fixture(project, flag):
    if torch.cuda.is_available():
        pytest.skip("auto would pick CUDA on this machine")
    project.makepyfile(test_model=DEVICE)
    result = project.runpytest("-s", *flag)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DEVICE cpu ci-runner*"])


def test_the_default_device_key_names_the_cpu(pytester):
    pytester.makepyfile(test_model=DEVICE)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DEVICE cpu cpu-*"])


# ----------------------------------------------------------------------------- skip, only, help


MIXED = """
def test_plain():
    assert 1 + 1 == 2


def test_timed(llmcycle, clock):
    llmcycle.measure("forward", clock.work(1.0))


import pytest

@pytest.mark.llmcycle(threshold=0.2)
def test_marked_only():
    pass
"""


def test_skip_deselects_timing_tests(project):
    project.makepyfile(test_model=MIXED)
    result = project.runpytest("--llmcycle-skip", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_plain PASSED*"])
    result.stdout.no_fnmatch_line("*llmcycle:*")


def test_only_runs_timing_tests(project):
    project.makepyfile(test_model=MIXED)
    result = project.runpytest("--llmcycle-only", "-v")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_timed PASSED*", "*test_marked_only PASSED*"])
    result.stdout.no_fnmatch_line("*test_plain*")


def test_options_ini_and_marker_are_documented_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*LLM latency regression tests (pytest-llmcycle)*",
            "*--llmcycle-baseline=PATH*",
            "*--llmcycle-threshold=FRACTION*",
            "*--llmcycle-budget=SECONDS*",
            "*--llmcycle-device=DEVICE*",
            "*--llmcycle-update *",
            "*--llmcycle-strict*",
            "*--llmcycle-skip*",
            "*--llmcycle-only*",
        ]
    )
    for ini in (
        "llmcycle_baseline",
        "llmcycle_threshold",
        "llmcycle_alpha",
        "llmcycle_budget",
        "llmcycle_min_rounds",
        "llmcycle_device",
        "llmcycle_device_key",
        "llmcycle_threads",
        "llmcycle_strict",
        "llmcycle_remeasure",
        "llmcycle_machine_check",
    ):
        result.stdout.fnmatch_lines([f"  {ini} *"])
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.llmcycle(threshold=..., alpha=..., budget=...*): a latency test*"])


def test_the_accept_command_quotes_parametrized_node_ids(project, monkeypatch):
    project.makepyfile(
        test_model="""
        import pytest

        @pytest.mark.parametrize("prompt", ["short", "long prompt"])
        def test_prompt(llmcycle, clock, prompt):
            llmcycle.measure("prefill", clock.work(2.0 if prompt == "short" else 8.0, "prefill"))
        """
    )
    record(project)
    monkeypatch.setenv("SLOW_PREFILL", "1.5")
    failed = project.runpytest()
    failed.assert_outcomes(failed=2)
    failed.stdout.fnmatch_lines(["  to accept the new numbers: pytest 'test_model.py::test_prompt[long prompt]' --llmcycle-update"])
    line = next(x for x in failed.stdout.lines if "[long prompt]" in x and "to accept" in x)
    accepted = project.runpytest(*shlex.split(line.split("to accept the new numbers:")[1])[1:])
    accepted.assert_outcomes(passed=1)
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_model.py::test_prompt[[]short[]]*"])


# ----------------------------------------------------------------------------- real time (big margins only)


def test_real_time_a_tripled_sleep_fails_and_a_shorter_one_passes(project, monkeypatch):
    """The real clock end to end: 2 ms -> 6 ms cannot pass, 6 ms -> 2 ms cannot fail, on any machine."""
    project.makepyfile(
        test_model="""
        import os
        import time

        def test_sleep(llmcycle):
            ms = float(os.environ["SLEEP_MS"])
            llmcycle.measure("sleep", lambda: time.sleep(ms / 1000))
        """
    )
    monkeypatch.setenv("SLEEP_MS", "2")
    record(project)
    monkeypatch.setenv("SLEEP_MS", "6")
    slower = project.runpytest()
    slower.assert_outcomes(failed=1)
    slower.stdout.fnmatch_lines(["llmcycle: stage 'sleep' regressed on ci-runner"])
    record(project, "--llmcycle-update-all")
    monkeypatch.setenv("SLEEP_MS", "2")
    faster = project.runpytest()
    faster.assert_outcomes(passed=1)
    faster.stdout.fnmatch_lines(["*sleep *improved"])


def test_module_and_function_markers_merge_closest_wins(pytester):
    """A module-level budget survives a function-level threshold marker."""
    from pytest_llmcycle.config import Settings
    from pytest_llmcycle.plugin import item_settings

    pytester.makepyfile(
        """
        import pytest
        pytestmark = pytest.mark.llmcycle(budget=0.3, threshold=0.5)

        @pytest.mark.llmcycle(threshold=0.2)
        def test_a():
            pass
        """
    )
    items, _ = pytester.inline_genitems()
    s = item_settings(items[0])
    assert s.budget_s == 0.3
    assert s.threshold == 0.2
    assert Settings().budget_s != 0.3


def test_record_refuses_zero_or_empty_samples(pytester):
    pytester.makepyfile(
        """
        import pytest
        from pytest_llmcycle.measure.timing import Measurement

        def test_zero(llmcycle):
            with pytest.raises(ValueError, match="positive, finite"):
                llmcycle.record("s", Measurement(samples_ns=(0.0, 1.0)))
            with pytest.raises(ValueError, match="positive, finite"):
                llmcycle.record("t", Measurement(samples_ns=()))
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
