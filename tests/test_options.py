"""One option table (config.OPTIONS): every flag and ini name comes from it, every value is checked
by it, and out-of-range values are refused with a message that says where they came from and the fix."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch  # noqa: F401  - inline pytester runs drop modules first imported inside them; torch cannot load twice

from pytest_llmcycle import cli
from pytest_llmcycle.config import MARKER_ARGS, OPTION, OPTIONS, RunOptions, SettingError, Settings, for_marker, resolve, resolve_run

#: every flag and ini option the plugin had before the table: none may go missing
FLAGS = [
    "--llmcycle-disable", "--llmcycle-baseline", "--llmcycle-threshold", "--llmcycle-alpha", "--llmcycle-budget", "--llmcycle-min-rounds",
    "--llmcycle-device", "--llmcycle-device-key", "--llmcycle-threads", "--llmcycle-update", "--llmcycle-update-all",
    "--llmcycle-update-append", "--llmcycle-strict", "--llmcycle-skip", "--llmcycle-only", "--llmcycle-report",
    "--llmcycle-history", "--llmcycle-tensorboard", "--llmcycle-wandb", "--llmcycle-stage-timeout", "--llmcycle-xdist-gpus",
    "--llmcycle-strict-all", "--llmcycle-update-force", "--llmcycle-report-samples",
    "--llmcycle-against", "--llmcycle-against-python", "--llmcycle-against-pairs", "--llmcycle-counters",
]
INI_NAMES = [
    "llmcycle_disable", "llmcycle_baseline", "llmcycle_threshold", "llmcycle_alpha", "llmcycle_budget", "llmcycle_min_rounds",
    "llmcycle_device", "llmcycle_device_key", "llmcycle_threads", "llmcycle_strict", "llmcycle_remeasure", "llmcycle_early_stop",
    "llmcycle_machine_check", "llmcycle_report", "llmcycle_history", "llmcycle_tensorboard", "llmcycle_wandb", "llmcycle_step_summary",
    "llmcycle_stage_timeout", "llmcycle_xdist_gpus", "llmcycle_strict_all", "llmcycle_report_samples",
    "llmcycle_against_pairs", "llmcycle_against_paths", "llmcycle_counters",
]


# ----------------------------------------------------------------------------- the table


def test_each_field_of_the_two_records_has_exactly_one_row():
    settings = {f.name for f in fields(Settings)}
    run = {f.name for f in fields(RunOptions)}
    assert not settings & run
    assert [o.name for o in OPTIONS] == list(OPTION)  # no name twice
    assert set(OPTION) == settings | run


def test_every_default_passes_its_own_check():
    for opt in OPTIONS:
        if opt.default is None:  # "not given": resolved later (threads, device key, stage limit, paths)
            continue
        items = opt.default if opt.many else [opt.default]
        assert all(opt.check(opt.parse(v)) for v in items), opt.name


def test_only_settings_can_be_changed_by_the_marker():
    settings = {f.name for f in fields(Settings)}
    assert all(o.name in settings for o in OPTIONS if o.marker)
    assert MARKER_ARGS == ("threshold", "alpha", "budget", "min_rounds", "max_rounds", "warmup_rounds", "precision",
                           "remeasure", "early_stop", "counters")


def test_every_flag_and_ini_option_is_registered_from_the_table(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert sorted(o.flag for o in OPTIONS if o.flag) == sorted(FLAGS)
    assert sorted(o.ini for o in OPTIONS if o.ini) == sorted(INI_NAMES)
    for name in FLAGS + INI_NAMES:
        assert name in out, name


# ----------------------------------------------------------------------------- sane ranges


@pytest.mark.parametrize("value, fraction", [("10", "0.10"), ("1", "0.01"), ("12.5", "0.125"), ("25", "0.25")])
def test_a_threshold_given_in_percent_is_refused_with_the_fraction_to_give(value, fraction):
    hint = f"is not valid: a threshold is a fraction; did you mean {fraction}?"
    with pytest.raises(SettingError) as e:
        resolve({"threshold": value}, {})
    assert str(e.value) == f"--llmcycle-threshold={value!r} {hint}"
    with pytest.raises(SettingError) as e:
        resolve({}, {"threshold": value})
    assert str(e.value) == f"ini option llmcycle_threshold={value!r} {hint}"
    with pytest.raises(SettingError) as e:
        for_marker(Settings(), {"threshold": float(value)}, "t.py::test_x")
    assert str(e.value) == f"t.py::test_x: @pytest.mark.llmcycle argument threshold={float(value)!r} {hint}"


@pytest.mark.parametrize("value", ["150", "inf", "nan"])
def test_a_threshold_that_is_no_percentage_either_gets_the_plain_rule(value):
    with pytest.raises(SettingError, match=r"is not valid: expected a fraction > 0 and < 1, e.g. 0.10 for 10%"):
        resolve({"threshold": value}, {})


def test_the_largest_thresholds_below_one_are_accepted():
    assert resolve({"threshold": "0.99"}, {}).threshold == 0.99


@pytest.mark.parametrize("value", ["0", "-0.01", "0.51", "1", "nan"])
def test_alpha_must_be_above_0_and_at_most_a_half(value):
    with pytest.raises(SettingError, match=rf"--llmcycle-alpha='{value}' is not valid: expected a probability > 0 and at most 0.5"):
        resolve({"alpha": value}, {})


def test_alpha_of_a_half_is_accepted_and_a_confidence_level_is_explained():
    assert resolve({"alpha": "0.5"}, {}).alpha == 0.5
    with pytest.raises(SettingError, match=r"alpha is the significance level, so 0.95 confidence is alpha=0.05"):
        resolve({}, {"alpha": "0.95"})


def test_a_budget_past_ten_minutes_is_refused_as_likely_milliseconds():
    assert resolve({"budget_s": "600"}, {}).budget_s == 600
    with pytest.raises(SettingError) as e:
        resolve({"budget_s": "1500"}, {})
    assert str(e.value) == (
        "--llmcycle-budget='1500' is not valid: the budget is seconds per stage, at most 600; "
        "did you mean 1.5 (1500 milliseconds)?"
    )
    with pytest.raises(SettingError, match=r"--llmcycle-budget='inf' is not valid: expected seconds > 0 and at most 600"):
        resolve({"budget_s": "inf"}, {})
    with pytest.raises(SettingError, match=r"argument budget=900 is not valid: the budget is seconds"):
        for_marker(Settings(), {"budget": 900}, "t.py::test_x")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"precision": 1}, "argument precision=1 is not valid: expected a fraction > 0 and < 1"),
        ({"warmup_rounds": -1}, "argument warmup_rounds=-1 is not valid: expected an integer >= 0"),
        ({"max_rounds": 2}, "argument max_rounds=2 is not valid: expected an integer >= 3"),
        ({"counters": "sometimes"}, "argument counters='sometimes' is not valid: 'sometimes' is not true, false or COUNTER:TOLERANCE"),
    ],
)
def test_marker_only_settings_are_checked_by_the_same_table(kwargs, fragment):
    with pytest.raises(SettingError, match=fragment):
        for_marker(Settings(), kwargs, "t.py::test_x")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_stage_timeout_must_be_finite_seconds(value):
    with pytest.raises(SettingError, match=rf"--llmcycle-stage-timeout='{value}' is not valid: expected seconds >= 0"):
        resolve_run({"stage_timeout_s": value}, {}, Path("."))
    assert resolve_run({"stage_timeout_s": "0"}, {}, Path(".")).stage_timeout_s == 0.0


def test_a_device_key_with_control_characters_is_refused():
    with pytest.raises(SettingError, match=r"ini option llmcycle_device_key='ci\\nrunner' is not valid: expected a non-empty name"):
        resolve({}, {"device_key": "ci\nrunner"})


def test_an_unknown_marker_argument_suggests_the_nearest():
    with pytest.raises(SettingError, match=r"argument\(s\) budget_s; allowed: .* \(did you mean budget\?\)"):
        for_marker(Settings(), {"budget_s": 1}, "t.py::test_x")


# ----------------------------------------------------------------------------- resolving the run's options


def test_update_append_and_update_all_imply_update():
    assert resolve({}, {}).update is False
    s = resolve({"update_append": True}, {})
    assert (s.update, s.update_all, s.update_append) == (True, True, True)
    s = resolve({"update_all": True}, {})
    assert (s.update, s.update_all, s.update_append) == (True, True, False)


def test_output_paths_from_the_command_line_are_relative_to_the_working_folder_from_ini_to_the_rootdir(tmp_path, monkeypatch):
    cwd, root = tmp_path / "here", tmp_path / "root"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = resolve_run({"report": ["a.md", "b.json"], "history": "h.db"}, {"report": ["x.html"], "tensorboard": "tb"}, root)
    assert r.report == (cwd / "a.md", cwd / "b.json")  # the command line replaces ini's whole list
    assert r.history == cwd / "h.db"
    assert r.tensorboard == root / "tb"
    assert resolve_run({}, {"report": ["x.html"]}, root).report == (root / "x.html",)
    assert resolve_run({}, {}, root) == RunOptions()


def test_a_report_with_an_unknown_extension_names_the_file():
    with pytest.raises(SettingError) as e:
        resolve_run({}, {"report": ["ok.md", "out.txt"]}, Path("."))
    assert str(e.value) == (
        "ini option llmcycle_report out.txt: unknown report format '.txt'; "
        "end the file name with one of .htm, .html, .json, .markdown, .md"
    )


# ----------------------------------------------------------------------------- in a real run

TWO_TESTS = """
import pytest

@pytest.mark.llmcycle(threshold=10)
def test_percent(llmcycle):
    pass

def test_other(llmcycle):
    llmcycle.measure("forward", lambda: sum(range(100)))

def test_plain():
    pass
"""


def test_a_threshold_in_percent_in_ini_stops_the_session(pytester):
    pytester.makeini("[pytest]\nllmcycle_threshold = 10\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option llmcycle_threshold='10' is not valid: a threshold is a fraction; did you mean 0.10?"])


def test_a_threshold_in_percent_in_a_marker_fails_only_that_test(pytester):
    pytester.makeini("[pytest]\nllmcycle_budget = 0.02\nllmcycle_machine_check = false\n")
    pytester.makepyfile(test_model=TWO_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "test_model.py::test_percent: @pytest.mark.llmcycle argument threshold=10 is not valid: "
        "a threshold is a fraction; did you mean 0.10?",
    ])
    assert "Traceback" not in result.stdout.str()


def test_llmcycle_compare_checks_its_threshold_and_alpha_like_the_plugin(capsys):
    for argv, message in [
        (["--threshold", "10"], "argument --threshold: '10' is not valid: a threshold is a fraction; did you mean 0.10?"),
        (["--alpha", "0.95"], "argument --alpha: '0.95' is not valid: expected a probability > 0 and at most 0.5"),
        (["--threshold", "ten"], "argument --threshold: 'ten' is not valid: expected a fraction > 0 and < 1"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(["compare", "old.json", "new.json", *argv])
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    args = cli.build_parser().parse_args(["compare", "a", "b", "--threshold", "0.2"])
    assert (args.threshold, args.alpha) == (0.2, OPTION["alpha"].default)
