"""Smoke mode (``--llmcycle-disable``): the fast test job runs each timed body once, untimed.

As pytest-benchmark's ``--benchmark-disable``: the test's own assertions run (a failing one fails
the test), each measured callable runs exactly once, nothing is judged, no baseline file is read
and torch is not imported by the plugin. The fixture's docstring documents its API for
``pytest --fixtures``. The LLM helpers run their callables once too (object level, at the end).
"""
from __future__ import annotations

import json
import os

import pytest

# Inline pytester runs drop the modules first imported inside them: torch cannot be loaded twice.
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.measure.steps  # noqa: F401,E402
import pytest_llmcycle.llm.ab  # noqa: F401,E402
import pytest_llmcycle.llm.scaling  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import torch  # noqa: E402

from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.fixture import NOT_TIMED, LLMCycle
from pytest_llmcycle.run.session import RunState

CORRUPT = "<<<<<<< HEAD\n{}\n=======\n"

TESTS = """
import pytest

CALLS = []


def test_measured_once(llmcycle):
    r = llmcycle.measure("forward", lambda: CALLS.append(1))
    assert CALLS == [1]  # one call: no cold call, calibration, warm-up or rounds
    assert r.outcome == "info" and r.median_ms is None and r.n == 0


def test_block_runs(llmcycle):
    runs = 0
    for _ in range(3):
        with llmcycle.stage("block"):
            runs += 1
    assert runs == 3


def test_body_fails(llmcycle):
    llmcycle.measure("forward", lambda: None)
    assert 1 + 1 == 3, "the body's own check"


def test_duplicate_stage_is_still_refused(llmcycle):
    llmcycle.measure("forward", lambda: None)
    with pytest.raises(ValueError, match="already measured"):
        llmcycle.measure("forward", lambda: None)
"""


@pytest.fixture
def project(pytester):
    pytester.makeini("[pytest]\nllmcycle_budget = 0.02\nllmcycle_machine_check = false\n")
    pytester.makepyfile(test_model=TESTS)
    return pytester


def test_fixtures_listing_documents_the_api(pytester):
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "llmcycle -- *",
            "*Times the stages of an inference cycle*",
            "*llmcycle.measure(stage, fn, setup=None)*",
            "*with llmcycle.stage(name)*",
            "*llmcycle.record(stage, measurement)*",
            "*llmcycle.generate(model, inputs, max_new_tokens)*llmcycle.tokens(loop)*",
            "*llmcycle.train_step(loss_fn*",
            "*llmcycle.counted(stage, fn)*",
            "*llmcycle.scaling(stage, make, sizes)*",
            "*llmcycle.ab(a, b)*",
            "*llmcycle.device*",
            "*--llmcycle-disable*",
        ]
    )


def test_disabled_run_runs_each_body_once_and_fails_a_failing_assertion(project):
    result = project.runpytest("-p", "no:cacheprovider", "--llmcycle-disable", "-rf")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: disabled (--llmcycle-disable)*",
            "FAILED test_model.py::test_body_fails - AssertionError: the body's own check*",
        ]
    )
    assert "-- llmcycle:" not in result.stdout.str()  # no stage table: nothing was timed
    assert not (project.path / ".llmcycle").exists()


def test_ini_disables_too(project):
    result = project.runpytest("-p", "no:cacheprovider", "-o", "llmcycle_disable=true")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["llmcycle: disabled*"])


def test_disable_refuses_update(project):
    result = project.runpytest("-p", "no:cacheprovider", "--llmcycle-disable", "--llmcycle-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmcycle-disable and --llmcycle-update exclude each other*drop one*"])
    result = project.runpytest("-p", "no:cacheprovider", "-o", "llmcycle_disable=true", "--llmcycle-update-all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option llmcycle_disable and --llmcycle-update exclude each other*-o llmcycle_disable=false*"])


SUBPROCESS_CONFTEST = """
import json
import sys

def pytest_sessionfinish(session):
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    (session.config.rootpath / "loaded.json").write_text(json.dumps(heavy))
"""


def test_disabled_run_reads_no_baseline_and_imports_no_torch(project, monkeypatch):
    # a corrupt baseline file stops a run that reads it (see test_collection_cost.py)
    (project.path / ".llmcycle").mkdir()
    (project.path / ".llmcycle" / "baselines.json").write_text(CORRUPT)
    project.makeconftest(SUBPROCESS_CONFTEST)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # other plugins may import torch themselves
    args = ("-p", "no:cacheprovider", "-p", "pytest_llmcycle.plugin")
    result = project.runpytest_subprocess(*args, "--llmcycle-disable")
    result.assert_outcomes(passed=3, failed=1)
    assert json.loads((project.path / "loaded.json").read_text()) == []
    # the same project without smoke mode reads the file and stops
    result = project.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


# ---------------------------------------------------------------------- the helpers, object level


def smoke(tmp_path) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.02, min_rounds=5, disable=True)
    return LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s)


def test_record_judges_nothing_and_keeps_no_row(tmp_path):
    from pytest_llmcycle.measure.timing import Measurement

    lc = smoke(tmp_path)
    r = lc.record("stage", Measurement(samples_ns=(5.0, 6.0)))
    assert (r.outcome, r.verdict.reason, r.median_ms) == ("info", NOT_TIMED, None)
    assert lc.finish() == [] and lc.results == []


def test_tokens_and_train_step_run_once(tmp_path):
    lc = smoke(tmp_path)
    loops = []

    def loop(tick):
        loops.append(1)
        for _ in range(4):
            tick()

    g = lc.tokens(loop, n_tokens=4)
    assert loops == [1]
    assert not g.timed and g.prefill.verdict.reason == NOT_TIMED and g.counters == {}
    assert len(g.calls) == 1 and g.stats.tokens_per_s > 0  # the one call's own numbers

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []

    def loss_fn():
        steps.append(1)
        return model(torch.ones(2, 4)).sum()

    t = lc.train_step(loss_fn, model=model, optimizer=opt)
    assert steps == [1] and t.optimizer.verdict.reason == NOT_TIMED and t.counters == {}
    assert model.weight.grad is not None  # backward ran


def test_generate_runs_once(tmp_path, tiny_llama, input_ids, monkeypatch):
    lc = smoke(tmp_path)
    calls = []
    real = tiny_llama.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "generate", counting)
    g = lc.generate(tiny_llama, input_ids, max_new_tokens=3)
    assert calls == [1]
    assert g.cold.n_tokens == 3 and len(g.calls) == 1 and g.decode.verdict.reason == NOT_TIMED


def test_counted_scaling_and_ab_run_once_and_assert_nothing(tmp_path):
    lc = smoke(tmp_path)
    counted = []
    r = lc.counted("fwd", lambda: counted.append(1))  # counters are on by default: not in smoke mode
    assert counted == [1] and r.counters == {}

    by_size = {}

    def make(n):
        return lambda: by_size.setdefault(n, []).append(1)

    s = lc.scaling("grow", make, [1, 2, 4], record=True)
    assert by_size == {1: [1], 2: [1], 4: [1]} and not s.timed
    assert s.assert_exponent(at_most=0.0, at_least=5.0) is None  # impossible bounds: nothing asserted

    a, b = [], []
    ab = lc.ab(lambda: a.append(1), lambda: b.append(1), counters=True)
    assert (a, b) == ([1], [1]) and not ab.timed
    ab.assert_faster(1000.0, strict=True)  # would surely fail on timed samples; here it judges nothing
