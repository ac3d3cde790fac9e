"""Never record from a bad state (issue 11): --llmcycle-update writes a test's stages together,
checks the machine against its stored reference in the same run, and refuses to store numbers
taken while the machine reads far off it, with a clear line and the command that forces it.

Stories on test_plugin_flow's project (fake clock; MACHINE_FACTOR stands in for timing the
reference workload), so every verdict and every refusal is exact.
"""
from __future__ import annotations

import shlex

import pytest

import pytest_llmcycle.run.fixture  # noqa: F401  - loaded once, outside the inline pytester runs
import torch  # noqa: F401
from pytest_llmcycle.config import Settings, resolve
from pytest_llmcycle.run.session import RunState
from test_plugin_flow import BASELINE, CONFTEST, INI, TWO_TESTS, record, stored

MACHINE_CHECK = ("-o", "llmcycle_machine_check=true")
NEW_STAGE = TWO_TESTS + """
def test_sample(llmcycle, clock):
    llmcycle.measure("sample", clock.work(0.5, "sample"))
    llmcycle.measure("topk", clock.work(0.25, "topk"))
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TWO_TESTS)
    return pytester


def force_command(result) -> list[str]:
    line = next(x for x in result.stdout.lines if "store these numbers anyway:" in x)
    return shlex.split(line.split("store these numbers anyway:")[1])


def test_a_test_is_re_recorded_with_all_its_stages_together(project, monkeypatch):
    record(project)
    monkeypatch.setenv("SLOW_DECODE", "1.3")
    result = record(project)
    # prefill did not change, but it is rewritten with decode: one test, one machine state
    result.stdout.fnmatch_lines(
        ["*test_generate*prefill *ok (updated)", "*test_generate*decode *regressed (updated)", "*wrote 2 baseline entries*"]
    )
    result.stdout.fnmatch_lines(["*test_forward*forward *ok"])
    assert stored(project, "test_model.py::test_generate", "decode")["median_ms"] == 1.3


def test_update_all_refuses_to_store_numbers_taken_on_a_machine_far_off_its_reference(project, monkeypatch):
    record(project)
    before = (project.path / BASELINE).read_bytes()
    monkeypatch.setenv("SLOW_FORWARD", "2.0")
    monkeypatch.setenv("MACHINE_FACTOR", "2.0")
    result = project.runpytest("--llmcycle-update-all", *MACHINE_CHECK)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: baseline *, mode record all",
            "llmcycle: NOT written: the stages of 2 test(s) (test_model.py::test_forward, test_model.py::test_generate): "
            "this machine read 2.00x slower than when the baseline was recorded: too different to normalise "
            "(more than 35% off), so not recorded",
            "  record again on a quiet machine, or store these numbers anyway: pytest test_model.py::test_forward "
            "test_model.py::test_generate --llmcycle-update-all --llmcycle-update-force",
        ]
    )
    result.stdout.no_fnmatch_line("*wrote*")
    result.stdout.no_fnmatch_line("*(updated)*")
    assert (project.path / BASELINE).read_bytes() == before

    forced = project.runpytest(*force_command(result)[1:], *MACHINE_CHECK)
    forced.assert_outcomes(passed=2)
    forced.stdout.fnmatch_lines(["*mode record all (forced)", "*wrote 3 baseline entries*"])
    assert stored(project, "test_model.py::test_forward", "forward")["median_ms"] == 4.0


def test_a_new_stage_is_not_recorded_on_a_far_off_machine_either(project, monkeypatch):
    record(project)
    project.makepyfile(test_model=NEW_STAGE)
    monkeypatch.setenv("MACHINE_FACTOR", "0.5")  # twice as fast: a bigger runner under the same key
    result = project.runpytest("--llmcycle-update", *MACHINE_CHECK)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: NOT written: the stages of 1 test(s) (test_model.py::test_sample): this machine read 2.00x "
            "faster than when the baseline was recorded*",
            "*anyway: pytest test_model.py::test_sample --llmcycle-update --llmcycle-update-force",
        ]
    )
    result.stdout.no_fnmatch_line("*wrote*")
    forced = project.runpytest(*force_command(result)[1:], *MACHINE_CHECK)
    forced.stdout.fnmatch_lines(["*sample*new (updated)*", "*topk*new (updated)*", "*wrote 2 baseline entries*"])


def test_a_machine_within_the_drift_it_can_normalise_records_as_usual(project, monkeypatch):
    record(project)
    monkeypatch.setenv("MACHINE_FACTOR", "1.2")
    result = project.runpytest("--llmcycle-update-all", *MACHINE_CHECK)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*wrote 3 baseline entries*"])
    result.stdout.no_fnmatch_line("*NOT written*")


def test_the_options_imply_what_they_need():
    s = resolve({"update_force": True, "strict_all": True}, {})
    assert s.update and s.update_force and s.strict and s.strict_all
    assert not resolve({}, {}).strict_all and not resolve({}, {}).update_force


def test_a_workers_refusals_reach_the_controller(tmp_path):
    worker = RunState(Settings(), tmp_path)
    worker.refused.append(("t.py::test_x", 2.4))
    controller = RunState(Settings(), tmp_path)
    controller.absorb_worker_output(worker.to_worker_output(), "gw0")
    assert controller.refused == [("t.py::test_x", 2.4)]
