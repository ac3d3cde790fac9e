"""Bad input: one line that starts with ``ERROR:`` and says the fix, no traceback, no file damage."""
from __future__ import annotations

import json

import pytest

# Inline pytester runs drop the modules first imported inside them: torch cannot be loaded twice,
# and re-importing (and assertion-rewriting) the rest would cost seconds per run.
import hypothesis  # noqa: F401,E402
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import torch  # noqa: F401,E402

BASELINE = ".llmcycle/baselines.json"

INI = """
[pytest]
llmcycle_budget = 0.05
llmcycle_device_key = ci-runner
llmcycle_machine_check = false
"""

TIMED = """
class FakeClock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def test_forward(llmcycle):
    clock = FakeClock()
    llmcycle.clock = clock
    calls = [0]

    def forward():
        calls[0] += 1
        clock.t += 1_000_000 + 10_000 * (calls[0] % 7)

    llmcycle.measure("forward", forward)


def test_plain():
    pass
"""


@pytest.fixture
def project(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TIMED)
    return pytester


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    everything = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in everything and "INTERNALERROR" not in everything
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def recorded(pytester) -> bytes:
    result = pytester.runpytest("--llmcycle-update")
    result.assert_outcomes(passed=2)
    return (pytester.path / BASELINE).read_bytes()


def good_file(pytester) -> dict:
    recorded(pytester)
    return json.loads((pytester.path / BASELINE).read_text())


# ----------------------------------------------------------------------------- the baseline file


def damage_and_check(pytester, text: str, *fragments: str) -> None:
    """Write a bad baseline file; a check run and an update run both refuse it and leave it as it was."""
    path = pytester.path / BASELINE
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    for args in ([], ["--llmcycle-update"], ["--llmcycle-update-all"]):
        assert_one_line_error(pytester.runpytest(*args), str(path), *fragments)
        assert path.read_text() == text


def test_a_corrupt_file_is_refused(project):
    damage_and_check(project, "<<<<<<< HEAD\n{}\n=======\n", "is not valid JSON (line 1, column 1", "git checkout --")


def test_a_truncated_file_is_refused(project):
    text = recorded(project).decode()
    damage_and_check(project, text[: len(text) // 2], "is not valid JSON (line", "--llmcycle-update")


def test_an_empty_file_is_refused(project):
    damage_and_check(project, "", "is empty (truncated?)")


def test_a_file_of_an_unknown_schema_version_is_refused(project):
    data = good_file(project)
    data["schema"] = 99
    damage_and_check(project, json.dumps(data), "has schema 99, newer than this pytest-llmcycle reads (1): upgrade pytest-llmcycle")


def test_a_nan_time_in_an_entry_is_refused(project):
    text = recorded(project).decode()
    entry = json.loads(text)["devices"]["ci-runner"]["tests"]["test_model.py::test_forward"]["forward"]
    bad = text.replace(f'"median_ms": {entry["median_ms"]}', '"median_ms": NaN', 1)
    assert bad != text
    damage_and_check(project, bad, "NaN is not a valid time")


def test_a_negative_time_in_an_entry_is_refused(project):
    data = good_file(project)
    data["devices"]["ci-runner"]["tests"]["test_model.py::test_forward"]["forward"]["samples_ms"][3] = -1.0
    damage_and_check(
        project, json.dumps(data, indent=1), "devices.ci-runner.tests['test_model.py::test_forward'].forward has a sample -1.0"
    )


def test_a_corrupt_file_does_not_matter_when_no_timing_test_runs(project):
    path = project.path / BASELINE
    path.parent.mkdir()
    path.write_text("garbage")
    project.runpytest("-k", "plain").assert_outcomes(passed=1, deselected=1)
    project.runpytest("--llmcycle-skip").assert_outcomes(passed=1, deselected=1)
    assert path.read_text() == "garbage"


def test_a_file_corrupted_during_the_run_is_not_overwritten(project):
    before = recorded(project)
    project.makepyfile(
        test_zz_corrupt="""
        def test_concurrent_writer(pytestconfig):
            (pytestconfig.rootpath / ".llmcycle/baselines.json").write_text("{ half written")
        """
    )
    project.makepyfile(test_new="def test_new(llmcycle):\n    llmcycle.measure('x', lambda: sum(range(100)))\n")
    result = project.runpytest("--llmcycle-update", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["llmcycle: baselines NOT written: baseline file * is not valid JSON*"])
    assert "Traceback" not in result.stdout.str()
    assert (project.path / BASELINE).read_text() == "{ half written"
    assert before  # the good file existed before the run


def test_a_write_that_fails_at_the_end_is_reported_and_fails_the_run(project):
    before = recorded(project)
    project.makeconftest(
        """
        import pytest_llmcycle.storage.baseline as bl

        real = bl.atomic_write_text


        def boom(path, text):
            raise OSError(28, "No space left on device")


        def pytest_configure(config):  # the disk fills up for the whole run, the final write included
            bl.atomic_write_text = boom


        def pytest_unconfigure(config):
            bl.atomic_write_text = real
        """
    )
    result = project.runpytest("--llmcycle-update-all")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["llmcycle: baselines NOT written: *[[]Errno 28[]] No space left on device*"])
    assert (project.path / BASELINE).read_bytes() == before


# ----------------------------------------------------------------------------- the location


def test_an_unwritable_baseline_location_is_refused_before_the_run(project):
    (project.path / "perf").write_text("a regular file, not a folder")
    result = project.runpytest("--llmcycle-update", "--llmcycle-baseline", "perf/baselines.json")
    line = assert_one_line_error(result, "cannot create the baseline file", "perf is not a folder", "--llmcycle-baseline")
    assert "perf/baselines.json" in line
    result.stdout.no_fnmatch_line("*PASSED*")
    assert (project.path / "perf").read_text() == "a regular file, not a folder"


def test_a_baseline_path_that_is_a_folder_is_refused(project):
    (project.path / "perf").mkdir()
    assert_one_line_error(project.runpytest("--llmcycle-baseline", "perf"), "perf")


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("value", ["0", "-0.1", "nan%", "ten"])
def test_a_threshold_that_is_not_positive_is_refused(project, value):
    assert_one_line_error(project.runpytest(f"--llmcycle-threshold={value}"), f"--llmcycle-threshold={value!r} is not valid", "a fraction > 0")


def test_a_bad_ini_threshold_is_refused(project):
    project.makeini(INI + "llmcycle_threshold = 0\n")
    assert_one_line_error(project.runpytest(), "ini option llmcycle_threshold='0' is not valid")


def assert_only_its_test_fails(result, nodeid: str, *fragments: str) -> str:
    """A bad marker fails its own test in one line at setup; the project's two tests still pass."""
    result.assert_outcomes(passed=2, errors=1)
    everything = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in everything and "INTERNALERROR" not in everything
    assert "def test_m" not in everything  # pytrace=False: the message, not the test's source
    lines = [line for line in result.stdout.lines if line.startswith(f"{nodeid}: ")]
    assert len(lines) == 1, result.stdout.str()
    for fragment in fragments:
        assert fragment in lines[0]
    result.stdout.fnmatch_lines([f"ERROR {nodeid} - *"])
    return lines[0]


def test_a_bad_marker_threshold_fails_only_its_test(project):
    project.makepyfile(test_marked="import pytest\n\n@pytest.mark.llmcycle(threshold=0)\ndef test_m(llmcycle):\n    pass\n")
    assert_only_its_test_fails(
        project.runpytest(), "test_marked.py::test_m", "@pytest.mark.llmcycle argument threshold=0 is not valid", "e.g. 0.10"
    )


def test_an_unknown_marker_argument_fails_only_its_test(project):
    project.makepyfile(test_marked="import pytest\n\n@pytest.mark.llmcycle(treshold=0.2)\ndef test_m(llmcycle):\n    pass\n")
    assert_only_its_test_fails(
        project.runpytest(), "test_marked.py::test_m",
        "unknown @pytest.mark.llmcycle argument(s) treshold; allowed: threshold", "did you mean threshold?",
    )


def test_positional_marker_arguments_fail_only_their_test(project):
    project.makepyfile(test_marked="import pytest\n\n@pytest.mark.llmcycle(0.2)\ndef test_m():\n    pass\n")
    assert_only_its_test_fails(project.runpytest(), "test_marked.py::test_m", "takes keyword arguments only, e.g. threshold=0.1")


def test_an_unavailable_device_is_refused(project):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(project.runpytest("--llmcycle-device", "cuda"), "--llmcycle-device: device 'cuda' requested but torch.cuda.is_available() is False")


def test_an_unknown_device_is_refused(project):
    assert_one_line_error(project.runpytest("--llmcycle-device", "tpu"), "--llmcycle-device='tpu' is not valid")


def test_skip_and_only_together_are_refused(project):
    assert_one_line_error(project.runpytest("--llmcycle-skip", "--llmcycle-only"), "exclude each other")


def test_min_rounds_above_max_rounds_fails_only_its_test(project):
    project.makepyfile(test_marked="import pytest\n\n@pytest.mark.llmcycle(min_rounds=50, max_rounds=20)\ndef test_m(llmcycle):\n    pass\n")
    # per-test overrides are checked like global ones
    assert_only_its_test_fails(project.runpytest(), "test_marked.py::test_m", "llmcycle min_rounds=50 exceeds max_rounds=20")


# ----------------------------------------------------------------------------- one file per module


@pytest.mark.parametrize(
    "nodeid, stem",
    [
        ("tests/test_latency.py::test_generate", "tests.test_latency"),
        ("tests/llm/test_decode.py::TestX::test_y[a-b]", "tests.llm.test_decode"),
        ("test_x.py", "test_x"),
        ("../../etc/test_x.py::t", "etc.test_x"),  # dots fold, slashes go: never a path
        ("tests\\win\\test_x.py::t", "tests.win.test_x"),
        ("tests/tëst ü$(rm).py::t", "tests.t_st____rm_"),
        ("...py::t", "_"),
    ],
)
def test_a_module_becomes_a_plain_file_name(nodeid, stem):
    from pytest_llmcycle.storage.baseline import module_file_stem

    assert module_file_stem(nodeid) == stem
    assert "/" not in stem and "\\" not in stem and not stem.startswith(".")


def test_a_module_file_always_lands_in_the_chosen_folder(tmp_path):
    from pytest_llmcycle.config import Settings
    from pytest_llmcycle.run.session import RunState

    run = RunState(Settings(baseline="perf/{module}.json"), tmp_path)
    for nodeid in ("../../x.py::t", "a/b/../../c.py::t", "/abs/test_y.py::t", "..\\..\\z.py::t"):
        assert run.baseline_path_for(nodeid).parent == tmp_path / "perf"


@pytest.mark.parametrize("path", ["perf/{modul}.json", "perf/{module.json", "{}.json", "perf/{0}.json"])
def test_a_baseline_path_with_another_placeholder_is_refused(project, path):
    result = project.runpytest("--llmcycle-baseline", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmcycle-baseline*{module}*"])
