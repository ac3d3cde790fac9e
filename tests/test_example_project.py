"""The example project's own test suite passes against its committed baselines, as a user runs it.

``cd example_project && pytest`` in a subprocess: its pyproject.toml settings (threshold 25 %,
budget 0.25 s), its committed ``.llmcycle/baselines.json``, nothing added but report paths in
a temporary folder. The committed file must come out of the run unchanged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
BASELINES = EXAMPLE / ".llmcycle" / "baselines.json"

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    before = BASELINES.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_STEP_SUMMARY"))}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(out / "junit.xml"),
           "--llmcycle-report", str(out / "latency.json"), "--llmcycle-report", str(out / "latency.md"),
           "--llmcycle-report", str(out / "latency.html")]
    proc = subprocess.run(cmd, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300)
    after = BASELINES.read_bytes()
    return proc, out, before, after


def test_the_example_suite_passes_against_its_committed_baselines(example_run):
    proc, out, before, after = example_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert after == before, "a plain run must never rewrite the committed baselines"
    doc = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    rows = [r for r in doc["results"] if r["kind"] == "stage"]
    stages = {(r["nodeid"], r["stage"]) for r in rows}
    # the stages the example measures, named as its README says
    assert {("tests/test_latency.py::test_generate", s) for s in ("prefill", "decode", "e2e")} <= stages
    assert {("tests/test_latency.py::test_train_step", s) for s in ("forward", "backward", "optimizer")} <= stages
    assert not [r for r in doc["results"] if r["outcome"] == "regressed"]


def test_on_the_machine_class_it_was_recorded_on_every_stage_is_judged(example_run):
    proc, out, _, _ = example_run
    doc = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    committed = json.loads(BASELINES.read_text(encoding="utf-8"))["devices"]
    key = doc["meta"]["device_key"]
    if key not in committed:
        pytest.skip(f"baselines were recorded on {sorted(committed)}, this machine is {key}: its stages are 'new'")
    stored = {(n, s) for n, stages in committed[key]["tests"].items() for s in stages}
    measured = {(r["nodeid"], r["stage"]): r for r in doc["results"] if r["kind"] == "stage"}
    assert stored == set(measured), "every committed entry belongs to a test that still measures it"
    other_env = sorted({r["verdict"]["reason"] for r in measured.values() if r["outcome"] == "not comparable"})
    if other_env:  # another thread count or torch/transformers version than the recording
        pytest.skip("; ".join(other_env))
    for r in measured.values():
        assert r["baseline"] is not None and r["outcome"] != "new", r
        assert r["verdict"]["threshold"] == 0.25  # the example's pyproject.toml setting


def test_the_example_reports_are_written(example_run):
    proc, out, _, _ = example_run
    md = (out / "latency.md").read_text(encoding="utf-8")
    assert "| `tests/test_latency.py::test_generate` | decode |" in md and "<details><summary>Environment</summary>" in md
    html = (out / "latency.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 6  # a strip plot per stage
    junit = (out / "junit.xml").read_text(encoding="utf-8")
    assert 'name="llmcycle.decode.median_ms"' in junit and 'name="llmcycle.backward.verdict"' in junit


def test_the_workflow_uses_options_the_plugin_has(pytester):
    """The example's GitHub workflow names real options (a renamed flag would break users' CI)."""
    import re

    workflow = (EXAMPLE / ".github" / "workflows" / "latency.yml").read_text(encoding="utf-8")
    flags = set(re.findall(r"--llmcycle-[a-z-]+", workflow))
    assert {"--llmcycle-report", "--llmcycle-update", "--llmcycle-device-key", "--llmcycle-history"} <= flags
    help_text = pytester.runpytest("--help").stdout.str()
    assert sorted(f for f in flags if f not in help_text) == []
    for needed in ("pull_request", "actions/upload-artifact", "reports/latency.md", "--junitxml"):
        assert needed in workflow
