"""The plugin loads in every pytest run of a user's repo: it must not pull in torch, numpy or transformers.

Checked in fresh processes (``sys.modules`` of this one already holds them all).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "transformers")

#: the project's conftest reports what is loaded when pytest is done
CONFTEST = f"""
import sys

def pytest_unconfigure(config):
    print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""

MIXED = """
def test_plain():
    pass


def test_timed(llmcycle):
    llmcycle.measure("forward", lambda: sum(range(100)))
"""


def heavy_modules_after(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "module", ["pytest_llmcycle", "pytest_llmcycle.plugin", "pytest_llmcycle.config", "pytest_llmcycle.measure.device", "pytest_llmcycle.storage.baseline"]
)
def test_importing_the_plugin_imports_no_heavy_library(module):
    assert heavy_modules_after(f"import {module}") == "[]"


def test_the_check_sees_a_heavy_import_when_there_is_one():
    # the same probe on a module that does need numpy: proves the probe can fail
    assert heavy_modules_after("import pytest_llmcycle.engine.stats") == "['numpy']"


@pytest.fixture
def isolated(pytester, monkeypatch):
    """A project run in a subprocess with only this plugin loaded (other installed plugins may import numpy)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_model=MIXED)
    return pytester


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "pytest_llmcycle.plugin", "-p", "no:cacheprovider", "-s", *args)


def test_a_run_without_timing_tests_imports_no_heavy_library(isolated):
    isolated.makepyfile(test_model="def test_plain():\n    pass\n")
    result = run(isolated)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["HEAVY []"])


@pytest.mark.parametrize("args", [["-k", "plain"], ["--llmcycle-skip"]], ids=["deselected-by-k", "llmcycle-skip"])
def test_timing_tests_that_do_not_run_cost_nothing(isolated, args):
    result = run(isolated, *args)
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["HEAVY []"])


def test_help_imports_no_heavy_library(isolated):
    result = run(isolated, "--help")
    result.stdout.fnmatch_lines(["*--llmcycle-update*", "HEAVY []"])


def test_a_timing_run_does_load_what_it_needs(isolated):
    # the other side of the coin: timing loads numpy (statistics), so the probe above is meaningful
    result = run(isolated)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["HEAVY [[]*'numpy'*[]]"])
