"""Settings and their precedence: marker > command line > ini > default."""
from __future__ import annotations

import pytest
import torch  # noqa: F401  - inline pytester runs drop modules first imported inside them; torch cannot load twice

from pytest_llmcycle.config import DEFAULT_BASELINE, MARKER_ARGS, SettingError, Settings, cli_flag, for_marker, resolve


def test_defaults_when_nothing_is_given():
    s = resolve({}, {})
    assert s == Settings()
    assert (s.threshold, s.alpha, s.budget_s, s.baseline) == (0.10, 0.01, 1.0, DEFAULT_BASELINE)
    assert s.remeasure and s.machine_check and not s.strict and not s.update


def test_the_command_line_beats_ini_which_beats_the_default():
    s = resolve({"threshold": "0.2", "budget_s": None}, {"threshold": "0.3", "budget_s": "0.5", "alpha": ""})
    assert s.threshold == 0.2  # command line
    assert s.budget_s == 0.5  # ini
    assert s.alpha == 0.01  # default: an empty ini value counts as not given


def test_the_marker_beats_everything_for_its_test_only():
    g = resolve({"threshold": "0.2"}, {})
    s = for_marker(g, {"threshold": 0.5, "budget": 0.25, "remeasure": False}, "t.py::test")
    assert (s.threshold, s.budget_s, s.remeasure) == (0.5, 0.25, False)
    assert g.threshold == 0.2  # the global settings are untouched (frozen record)
    with pytest.raises(Exception):
        g.threshold = 1.0  # type: ignore[misc]


def test_settings_build_the_timing_policy():
    p = for_marker(resolve({}, {}), {"budget": 0.05, "min_rounds": 5, "warmup_rounds": 0}, "t").timing_policy()
    assert (p.budget_s, p.min_rounds, p.warmup_rounds) == (0.05, 5, 0)


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("Yes", True), ("off", False), ("0", False), ("false", False)])
def test_booleans_read_from_ini_text(text, value):
    assert resolve({}, {"machine_check": text}).machine_check is value


@pytest.mark.parametrize(
    "cli, fragment",
    [
        ({"threshold": "0"}, "--llmcycle-threshold='0' is not valid: expected a fraction > 0"),
        ({"threshold": "-0.1"}, "--llmcycle-threshold='-0.1' is not valid"),
        ({"threshold": "ten"}, "--llmcycle-threshold='ten' is not valid"),
        ({"alpha": "1"}, "--llmcycle-alpha='1' is not valid: expected a probability"),
        ({"budget_s": "0"}, "--llmcycle-budget='0' is not valid: expected seconds > 0"),
        ({"min_rounds": "2"}, "--llmcycle-min-rounds='2' is not valid: expected an integer >= 3"),
        ({"min_rounds": "3.5"}, "--llmcycle-min-rounds='3.5' is not valid"),
        ({"threads": "0"}, "--llmcycle-threads='0' is not valid: expected an integer >= 1"),
        ({"device": "tpu"}, "--llmcycle-device='tpu' is not valid: expected auto, cpu, cuda, cuda:N or mps"),
        ({"device_key": "  "}, "--llmcycle-device-key='  ' is not valid"),
        ({"min_rounds": "50", "max_rounds": 20}, "min_rounds=50 exceeds max_rounds=20"),
    ],
)
def test_a_bad_command_line_value_names_the_flag_and_a_valid_value(cli, fragment):
    with pytest.raises(SettingError) as e:
        resolve(cli, {})
    assert fragment in str(e.value)


def test_a_bad_ini_value_names_the_ini_option():
    with pytest.raises(SettingError, match=r"ini option llmcycle_threshold='0' is not valid"):
        resolve({}, {"threshold": "0"})
    with pytest.raises(SettingError, match=r"ini option llmcycle_budget='x' is not valid"):
        resolve({}, {"budget_s": "x"})
    with pytest.raises(SettingError, match=r"ini option llmcycle_machine_check='maybe' is not valid: expected true or false"):
        resolve({}, {"machine_check": "maybe"})


def test_a_bad_ini_value_is_ignored_when_the_command_line_overrides_it():
    assert resolve({"threshold": "0.2"}, {"threshold": "0"}).threshold == 0.2


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"treshold": 0.1}, "unknown @pytest.mark.llmcycle argument(s) treshold; allowed: threshold"),
        ({"budget_s": 1}, "unknown @pytest.mark.llmcycle argument(s) budget_s"),
        ({"threshold": 0}, "argument threshold=0 is not valid: expected a fraction > 0"),
        ({"threshold": True}, "argument threshold=True is not valid"),
        ({"min_rounds": 2.5}, "argument min_rounds=2.5 is not valid"),
        ({"remeasure": "perhaps"}, "argument remeasure='perhaps' is not valid"),
    ],
)
def test_a_bad_marker_argument_names_the_test_and_the_allowed_arguments(kwargs, fragment):
    with pytest.raises(SettingError) as e:
        for_marker(Settings(), kwargs, "tests/t.py::test_x")
    assert str(e.value).startswith("tests/t.py::test_x: ")
    assert fragment in str(e.value)


def test_a_marker_cannot_set_min_rounds_above_max_rounds():
    with pytest.raises(SettingError, match="t.py::test_x: llmcycle min_rounds=50 exceeds max_rounds=20"):
        for_marker(Settings(), {"min_rounds": 50, "max_rounds": 20}, "t.py::test_x")
    assert for_marker(Settings(), {"min_rounds": 50, "max_rounds": 50}, "t").min_rounds == 50


def test_every_marker_argument_is_a_setting():
    names = {"budget_s" if a == "budget" else a for a in MARKER_ARGS}
    assert names <= set(Settings.__dataclass_fields__)


def test_flags_are_spelled_like_the_settings():
    assert cli_flag("budget_s") == "--llmcycle-budget"
    assert cli_flag("device_key") == "--llmcycle-device-key"
    assert cli_flag("threshold") == "--llmcycle-threshold"


# ----------------------------------------------------------------------------- in a real run

PRECEDENCE_TEST = """
import pytest

def test_default(llmcycle):
    print("SETTINGS default", llmcycle.settings.threshold, llmcycle.settings.budget_s, llmcycle.settings.alpha)

@pytest.mark.llmcycle(threshold=0.5)
def test_marked(llmcycle):
    print("SETTINGS marked", llmcycle.settings.threshold, llmcycle.settings.budget_s, llmcycle.settings.alpha)
"""


def test_precedence_in_a_real_run(pytester):
    """ini sets threshold and budget; the command line overrides the threshold; a marker overrides it again."""
    pytester.makeini("[pytest]\nllmcycle_threshold = 0.3\nllmcycle_budget = 0.05\n")
    pytester.makepyfile(PRECEDENCE_TEST)
    result = pytester.runpytest("-s", "--llmcycle-threshold", "0.2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*SETTINGS default 0.2 0.05 0.01*", "*SETTINGS marked 0.5 0.05 0.01*"])
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*SETTINGS default 0.3 0.05 0.01*", "*SETTINGS marked 0.5 0.05 0.01*"])
