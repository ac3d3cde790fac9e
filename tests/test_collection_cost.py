"""Collecting, deselecting or skipping timing tests reads no baseline file and imports no torch.

The baselines are loaded and the device resolved when tests are about to run
(``pytest_runtestloop``), so each story here keeps a corrupt baseline file in the project:
a run that read it would stop with a usage error. Runs are real subprocesses, whose
``sys.modules`` start empty (this process already holds torch).
"""
from __future__ import annotations

import json
import os

import pytest

#: the project's conftest writes what is loaded when the session finishes
CONFTEST = """
import json
import sys

def pytest_sessionfinish(session):
    heavy = sorted(m for m in ("torch", "numpy", "transformers") if m in sys.modules)
    (session.config.rootpath / "loaded.json").write_text(json.dumps(heavy))
"""

TESTS = """
import pytest

def test_plain():
    pass

def test_timed(llmcycle):
    llmcycle.measure("forward", lambda: sum(range(100)))

@pytest.mark.llmcycle(threshold="x")
def test_bad_marker():
    pass
"""

CORRUPT = "<<<<<<< HEAD\n{}\n=======\n"


@pytest.fixture
def project(pytester, monkeypatch):
    """Runs with only this plugin (other installed plugins may import numpy themselves)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\nllmcycle_budget = 0.02\nllmcycle_machine_check = false\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_model=TESTS)
    (pytester.path / ".llmcycle").mkdir()
    (pytester.path / ".llmcycle" / "baselines.json").write_text(CORRUPT)
    return pytester


def run(pytester, *args):
    plugin = () if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") is None else ("-p", "pytest_llmcycle.plugin")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *plugin, *args)


def loaded(pytester) -> list[str]:
    return json.loads((pytester.path / "loaded.json").read_text())


def test_collect_only_succeeds_with_a_corrupt_baseline_file_and_loads_nothing(project):
    result = run(project, "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["test_model.py::test_plain", "test_model.py::test_timed", "test_model.py::test_bad_marker"])
    assert loaded(project) == []
    assert (project.path / ".llmcycle" / "baselines.json").read_text() == CORRUPT


def test_llmcycle_skip_runs_the_other_tests_and_loads_nothing(project):
    result = run(project, "--llmcycle-skip")
    result.assert_outcomes(passed=1, deselected=2)
    assert loaded(project) == []


def test_with_every_installed_plugin_collecting_still_imports_no_torch(project, monkeypatch):
    # the user's real environment: pytest-xdist and friends load too (and the plugin registers
    # its xdist roles); whatever they import, collecting timing tests must not pull in torch
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    result = run(project, "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert "torch" not in loaded(project)


def test_an_unusable_device_does_not_stop_collecting(project):
    result = run(project, "--co", "-q", "--llmcycle-device", "cuda:999")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    assert loaded(project) == []


def test_running_the_timing_tests_refuses_the_corrupt_file_before_any_test(project):
    # the other side of the coin: the same project, run for real, stops in one line
    result = run(project)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "baselines.json is not valid JSON" in errors[0], result.stderr.str()
    assert "passed" not in result.stdout.str()  # not even test_plain ran
    assert (project.path / ".llmcycle" / "baselines.json").read_text() == CORRUPT


def test_running_on_an_unusable_device_is_refused_before_any_test(project):
    (project.path / ".llmcycle" / "baselines.json").unlink()
    result = run(project, "--llmcycle-device", "cuda:999")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llmcycle-device: device 'cuda:999' requested but *"])
    assert "passed" not in result.stdout.str()
