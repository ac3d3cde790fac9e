"""The example project's own test suite, run as a user runs it.

``pytest`` in a copy of ``example_project`` (a subprocess): its pyproject.toml settings
(threshold 25 %, budget 0.25 s), its ``.llmcycle/baselines.json``, nothing added but report paths
in a temporary folder.

The copy first re-records every baseline in two processes (``--llmcycle-update-all``, then
``--llmcycle-update-append``), then a plain run is checked against them. It does not compare with the committed numbers: they were recorded on
another day. On this 2-core VM a 2 ms training step moved from day to day by more than the
example's 25 % threshold (+15 to +50 % on 2026-11-29, reference workload at 1.02x). A test
against them would test the day's machine, not the plugin. What the committed file holds is
checked without timing: it loads, and it has exactly the stages the example measures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmcycle.storage.baseline import Baselines

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
BASELINES = EXAMPLE / ".llmcycle" / "baselines.json"

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    committed = BASELINES.read_bytes()
    project = out / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".benchmarks", "*.egg-info"))
    baselines = project / ".llmcycle" / "baselines.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_STEP_SUMMARY"))}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # in two processes, as the example's own baselines are: its train step has per-process modes
    # Both recordings are forced: the "machine reads far off its reference" refusal is a real-time
    # check (tested with injected factors in test_recording_state); here it would test the day's
    # machine (the first replaces a reference timed elsewhere; the second failed in CI seconds later).
    # Only tests/test_latency.py records stages (the rest are A/B tests with nothing to store; the
    # committed-file test below checks that), so the recordings run that file alone (CI time).
    for update in (["--llmcycle-update-all", "--llmcycle-update-force"], ["--llmcycle-update-append", "--llmcycle-update-force"]):
        record = subprocess.run(base + update + ["tests/test_latency.py"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert record.returncode == 0, record.stdout[-6000:] + record.stderr[-2000:]
    before = baselines.read_bytes()
    cmd = base + ["--junitxml", str(out / "junit.xml"), "--llmcycle-report", str(out / "latency.json"),
                  "--llmcycle-report", str(out / "latency.md"), "--llmcycle-report", str(out / "latency.html")]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert BASELINES.read_bytes() == committed, "running the example must never touch the committed file"
    return proc, out, before, baselines.read_bytes()


def test_the_example_suite_passes_against_baselines_recorded_just_before(example_run):
    proc, out, before, after = example_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert after == before, "a plain run must never rewrite the baselines"
    doc = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    rows = [r for r in doc["results"] if r["kind"] == "stage"]
    stages = {(r["nodeid"], r["stage"]) for r in rows}
    # the stages the example measures, named as its README says
    assert {("tests/test_latency.py::test_generate", s) for s in ("prefill", "decode", "e2e")} <= stages
    assert {("tests/test_latency.py::test_train_step", s) for s in ("forward", "backward", "optimizer")} <= stages
    assert not [r for r in doc["results"] if r["outcome"] == "regressed"]
    for r in rows:  # every stage was judged against its fresh baseline, with the example's threshold
        assert r["baseline"] is not None and r["outcome"] not in ("new", "not comparable"), r
        assert r["verdict"]["threshold"] == 0.25


def test_the_committed_baselines_hold_exactly_the_stages_the_example_measures(example_run):
    _, out, _, _ = example_run
    doc = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    measured = {(r["nodeid"], r["stage"]) for r in doc["results"] if r["kind"] == "stage"}
    committed = Baselines.load(BASELINES)  # validates: schema, times, one line per error
    by_key: dict = {}
    for key, nodeid, stage, entry in committed.iter_entries():
        by_key.setdefault(key, set()).add((nodeid, stage))
        assert entry.env.get("threads") and entry.samples_ms, (key, nodeid, stage)
    assert by_key, "the example ships recorded baselines"
    for key, stored in by_key.items():
        assert stored == measured, f"{key}: every committed entry belongs to a stage the example still measures"
        assert committed.reference(key) is not None  # and the reference workload recorded with them


def test_the_example_reports_are_written(example_run):
    proc, out, _, _ = example_run
    md = (out / "latency.md").read_text(encoding="utf-8")
    assert "| `tests/test_latency.py::test_generate` | decode |" in md and "<details><summary>Environment</summary>" in md
    html = (out / "latency.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 6  # a strip plot per stage
    junit = (out / "junit.xml").read_text(encoding="utf-8")
    assert 'name="llmcycle.decode.median_ms"' in junit and 'name="llmcycle.backward.verdict"' in junit


def test_the_readme_demo_judges_the_example_against_the_shipped_base(tmp_path):
    """The README's first judged comparison: the example against the tag where its decode loop
    drops the KV cache. Per-token decode reads improved (the base recomputes the whole sequence:
    several times slower), prefill is not a regression. Runs in this checkout (the tag needs the
    repository's history; a shallow clone without tags skips)."""
    root = EXAMPLE.parent
    tag = "example-base-lost-kv-cache"
    if shutil.which("git") is None:
        pytest.skip("needs git")
    has = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}"], cwd=root, capture_output=True)
    if has.returncode != 0:
        pytest.skip(f"the tag {tag} is not in this clone (fetch tags: git fetch --tags; in Actions fetch-depth: 0)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_STEP_SUMMARY"))}
    report = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_latency.py::test_generate",
         f"--llmcycle-against={tag}", "--llmcycle-against-pairs=1", f"--llmcycle-report={report}"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert f"llmcycle: against {tag} @ " in proc.stdout
    rows = {r["stage"]: r for r in json.loads(report.read_text())["results"] if r["kind"] == "stage"}
    assert rows["decode"]["outcome"] == "improved", rows["decode"]["verdict"]
    assert rows["decode"]["verdict"]["ratio"] < 0.7
    assert rows["prefill"]["outcome"] != "regressed", rows["prefill"]["verdict"]
