"""Device keys that are stable for a runner class (issue 11, item 5), and counters judged on any
machine of the same device kind (item 6).

The default key of a CPU is its vendor and family (``cpu-amd-epyc``), so the VMs of one runner
class share it whether they report ``AMD EPYC`` or ``AMD EPYC 7763 64-Core Processor``; the full
model is a placeholder away (``--llmcycle-device-key 'cpu-{model}'``). A file recorded under a
full-model key keeps working. Stories run on test_plugin_flow's project (fake clock), with the
CPU model the OS reports replaced, so every key and verdict is exact.
"""
from __future__ import annotations

import json

import pytest

import pytest_llmcycle.run.fixture  # noqa: F401  - loaded once, outside the inline pytester runs
import torch  # noqa: F401
from pytest_llmcycle.measure import device as devmod
from test_plugin_flow import BASELINE, CONFTEST, TWO_TESTS

GHA = "AMD EPYC 7763 64-Core Processor"


@pytest.mark.parametrize("model, family", [
    ("AMD EPYC", "amd-epyc"),
    (GHA, "amd-epyc"),
    ("AMD EPYC 9V74 80-Core Processor", "amd-epyc"),
    ("Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz", "intel-xeon-platinum"),
    ("Intel(R) Xeon(R) CPU @ 2.20GHz", "intel-xeon"),
    ("Intel Xeon Processor (Icelake)", "intel-xeon"),
    ("Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz", "intel-core-i7"),
    ("13th Gen Intel(R) Core(TM) i9-13900K", "intel-core-i9"),
    ("AMD Ryzen 9 5950X 16-Core Processor", "amd-ryzen"),
    ("Apple M2 Pro", "apple-m2"),
    ("aarch64", "aarch64"),
])
def test_the_cpu_family_is_vendor_and_family_before_the_model_number(model, family):
    assert devmod.cpu_family(model) == family


@pytest.fixture
def cpu_named(monkeypatch):
    """Make the OS report ``model`` as this machine's CPU."""
    def name(model: str) -> None:
        monkeypatch.setattr(devmod, "device_name", lambda device: model)
    return name


def test_the_default_key_is_the_family_so_a_fleet_shares_it(cpu_named):
    cpu_named(GHA)
    assert devmod.default_device_key("cpu") == "cpu-amd-epyc"
    cpu_named("AMD EPYC")  # the same runner class, as a VM reports it
    assert devmod.default_device_key("cpu") == "cpu-amd-epyc"


def test_the_full_model_and_fleet_names_are_placeholders_of_the_key_option(cpu_named):
    cpu_named(GHA)
    assert devmod.expand_device_key("cpu-{model}", "cpu") == "cpu-amd-epyc-7763-64-core-processor"
    assert devmod.expand_device_key("gha-{family}", "cpu") == "gha-amd-epyc"
    assert devmod.expand_device_key("{kind}-{family}", "cpu") == "cpu-amd-epyc"
    assert devmod.expand_device_key("ci-runner", "cpu") == "ci-runner"


@pytest.mark.parametrize("key, named", [("cpu-{modle}", "{modle}"), ("cpu-{model", "a stray brace"), ("x}", "a stray brace")])
def test_an_unknown_placeholder_is_refused_by_name(key, named):
    with pytest.raises(ValueError, match=r"holds " + named.replace("{", r"\{").replace("}", r"\}")
                       + r": the placeholders are \{kind\}, \{family\} and \{model\}"):
        devmod.expand_device_key(key, "cpu")


INI = """
[pytest]
llmcycle_budget = 0.05
llmcycle_machine_check = false
"""


@pytest.fixture
def project(pytester, cpu_named):
    cpu_named(GHA)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TWO_TESTS)
    return pytester


def keys(pytester) -> list[str]:
    return sorted(json.loads((pytester.path / BASELINE).read_text())["devices"])


def test_a_fleet_records_under_its_family_and_the_option_keeps_the_full_model(project):
    assert project.runpytest("--llmcycle-update").ret == 0
    assert keys(project) == ["cpu-amd-epyc"]
    result = project.runpytest("--llmcycle-update", "--llmcycle-device-key", "cpu-{model}")
    result.stdout.fnmatch_lines(["llmcycle: baseline *, device key cpu-amd-epyc-7763-64-core-processor, *"])
    assert keys(project) == ["cpu-amd-epyc", "cpu-amd-epyc-7763-64-core-processor"]


def test_a_file_recorded_under_the_full_model_key_keeps_being_judged(project):
    project.runpytest("--llmcycle-update", "--llmcycle-device-key", "cpu-{model}")
    assert keys(project) == ["cpu-amd-epyc-7763-64-core-processor"]
    result = project.runpytest()  # no option: the file's existing full-model key is used
    result.stdout.fnmatch_lines(["llmcycle: baseline *, device key cpu-amd-epyc-7763-64-core-processor, *"])
    result.stdout.fnmatch_lines(["*test_forward*forward*ok*"])
    result.stdout.no_fnmatch_line("* new*")


def test_a_bad_placeholder_stops_the_run_before_any_test(project):
    result = project.runpytest("--llmcycle-device-key", "cpu-{cores}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: --llmcycle-device-key (llmcycle_device_key): device key 'cpu-{cores}' holds {cores}*"])


# ----------------------------------------------------------------------------- counters elsewhere

COUNTED = """
import os

def test_counted(llmcycle, clock):
    flops = float(os.environ.get("FLOPS", "1000"))
    fn = clock.work(2.0, "forward")
    from pytest_llmcycle.measure.timing import time_callable
    llmcycle.record("forward", time_callable(fn, "cpu", llmcycle.settings.timing_policy(), llmcycle.clock),
                    counters={"flops": flops, "aten_ops": 12.0})
"""


@pytest.fixture
def counted_project(project):
    project.makepyfile(test_model=COUNTED)
    assert project.runpytest("--llmcycle-update", "--llmcycle-device-key", "cpu-ci-box").ret == 0
    return project


def rows(result) -> str:
    return "\n".join(result.stdout.lines)


def test_counters_of_another_cpu_judge_a_newcomer_whose_time_is_not_judged(counted_project):
    result = counted_project.runpytest("-rA")  # this machine's key: cpu-amd-epyc, not in the file
    assert result.ret == 0
    text = rows(result)
    assert "new" in text and "counters of device key 'cpu-ci-box' (same device kind and library versions) unchanged" in text


def test_a_counter_that_grew_fails_on_a_newcomer_too(counted_project, monkeypatch):
    monkeypatch.setenv("FLOPS", "1500")
    result = counted_project.runpytest()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*forward*regressed*"])
    assert "counters of device key 'cpu-ci-box'" in rows(result) and "time not judged" in rows(result)


def test_counters_of_another_device_kind_or_torch_judge_nothing(counted_project, monkeypatch):
    path = counted_project.path / BASELINE
    data = json.loads(path.read_text())
    data["devices"]["cuda-box"] = data["devices"].pop("cpu-ci-box")  # a GPU's counts: other kernels, other bytes
    path.write_text(json.dumps(data))
    monkeypatch.setenv("FLOPS", "1500")
    result = counted_project.runpytest()
    assert result.ret == 0 and "counters of device key" not in rows(result)
    data["devices"]["cpu-ci-box"] = data["devices"].pop("cuda-box")
    entry = data["devices"]["cpu-ci-box"]["tests"]["test_model.py::test_counted"]["forward"]
    entry["env"]["torch"] = "1.0.0"  # counted by another torch: its op counts may differ
    path.write_text(json.dumps(data))
    result = counted_project.runpytest()
    assert result.ret == 0 and "counters of device key" not in rows(result)


def test_the_example_project_judges_counters_on_a_newcomers_machine(tmp_path):
    """A newcomer (another CPU: here another key) runs the example against its committed file:
    time has no baseline for that key, and the counters are judged against cpu-amd-epyc's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("transformers")
    example = Path(__file__).resolve().parent.parent / "example_project"
    project = tmp_path / "example_project"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info"))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PYTEST_", "GITHUB_STEP_SUMMARY"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_latency.py",
         "--llmcycle-device-key", "cpu-newcomer-laptop", "--llmcycle-report", str(tmp_path / "r.json")],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = [r for r in json.loads((tmp_path / "r.json").read_text())["results"] if r["kind"] == "stage" and r.get("counters")]
    assert rows, "the example's LLM helpers count FLOPs and ops"
    for r in rows:
        assert r["verdict"]["outcome"] in ("new", "regressed", "improved")
        assert "counters of device key 'cpu-amd-epyc'" in r["verdict"]["reason"], r["verdict"]
