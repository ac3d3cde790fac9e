"""Baseline files in pull requests: one stage's update is a small diff, and two PRs updating
different tests (even neighbours in the file) merge without conflict. Checked with real git.

Each branch writes the file the way the plugin does (``merge_into_file``: the formatter,
atomic write); the merged result must equal the file written with both updates at once.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_llmcycle.storage.baseline import Baselines, merge_into_file
from pytest_llmcycle.storage.baseline import entry_from_samples

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

KEY = "cpu-amd-epyc"
ENV = {"device_name": "AMD EPYC", "dtype": "float32", "threads": 1, "torch": "2.13.0"}
TESTS = [f"tests/test_model.py::test_{name}" for name in ("a", "b", "c")]
STAGES = {"backward": 8.0, "decode": 1.0, "prefill": 5.0}


def entry(center: float, stage: str, cold: float = 20.0):
    unit = "token" if stage == "decode" else "call"
    return entry_from_samples([center * (1 + 0.003 * ((i * 7) % 13)) for i in range(40)], unit, cold, ENV)


def update(nodeid: str, stage: str, factor: float = 1.3) -> tuple:
    return (KEY, nodeid, stage, entry(STAGES[stage] * factor, stage, cold=25.0))


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo whose main branch has the baselines of three tests with three stages each."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    merge_into_file(r / "baselines.json", [(KEY, t, s, entry(c, s)) for t in TESTS for s, c in STAGES.items()])
    git(r, "add", "baselines.json")
    git(r, "commit", "-q", "-m", "baselines")
    return r


def branch(repo: Path, name: str, updates: list) -> None:
    git(repo, "checkout", "-q", "-b", name, "main")
    merge_into_file(repo / "baselines.json", updates)
    git(repo, "commit", "-q", "-am", name)
    git(repo, "checkout", "-q", "main")


def merge_both(repo: Path, one: list, two: list) -> subprocess.CompletedProcess:
    """Branch pr1 and pr2 off main, each updating the file; merge both into main."""
    branch(repo, "pr1", one)
    branch(repo, "pr2", two)
    git(repo, "merge", "-q", "pr1")
    return git(repo, "merge", "--no-edit", "pr2", check=False)


def expected_text(repo: Path, tmp_path: Path, updates: list) -> str:
    """The file a single run applying every update to the base would write."""
    ref = tmp_path / "expected.json"
    base = git(repo, "merge-base", "pr1", "pr2").stdout.strip()
    ref.write_text(git(repo, "show", f"{base}:baselines.json").stdout, encoding="utf-8")
    merge_into_file(ref, updates)
    return ref.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "one, two",
    [
        # neighbours in the file: the last stage of test_a and the first stage of test_b
        ([update(TESTS[0], "prefill")], [update(TESTS[1], "backward")]),
        # the same test, adjacent stages
        ([update(TESTS[1], "backward")], [update(TESTS[1], "decode")]),
        # a new test inserted right next to a neighbour's update
        ([(KEY, "tests/test_model.py::test_a2", "decode", entry(1.0, "decode"))], [update(TESTS[1], "backward")]),
        # a new stage appended to test_a while test_b's first stage changes
        ([(KEY, TESTS[0], "rerank", entry(2.0, "rerank"))], [update(TESTS[1], "backward")]),
    ],
    ids=["neighbour-tests", "neighbour-stages", "new-test-next-to-update", "new-stage-next-to-update"],
)
def test_two_prs_updating_different_entries_merge_without_conflict(repo, tmp_path, one, two):
    result = merge_both(repo, one, two)
    assert result.returncode == 0, result.stdout + result.stderr
    merged = (repo / "baselines.json").read_text(encoding="utf-8")
    assert merged == expected_text(repo, tmp_path, one + two)
    Baselines.load(repo / "baselines.json")  # valid, loadable JSON


def test_two_prs_updating_the_same_stage_do_conflict(repo):
    """The check above can fail: the same entry changed twice is a real conflict."""
    result = merge_both(repo, [update(TESTS[1], "decode", 1.3)], [update(TESTS[1], "decode", 1.5)])
    assert result.returncode != 0 and "CONFLICT" in result.stdout


def test_one_stage_update_is_a_small_diff_inside_that_entry(repo):
    branch(repo, "pr", [update(TESTS[1], "decode")])
    added, removed, _ = git(repo, "diff", "--numstat", "main", "pr").stdout.split("\t")
    assert int(added) == int(removed) <= 6  # cold, median, n, quartiles, samples: one line each
    old = git(repo, "show", "main:baselines.json").stdout.splitlines()
    changed = [ln[1:] for ln in git(repo, "diff", "-U0", "main", "pr").stdout.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    start = next(i for i, ln in enumerate(old) if ln.strip() == f'"{TESTS[1]}": {{')
    decode = next(i for i in range(start, len(old)) if old[i].strip() == '"decode": {')
    end = next(i for i in range(decode, len(old)) if old[i].strip().startswith("}"))
    assert all(ln in old[decode:end] for ln in changed)  # every changed line belongs to that entry


def test_two_runs_appending_at_once_both_count(tmp_path):
    """--llmcycle-update-append pools with the entry stored when the file is written, under its lock."""
    from pytest_llmcycle.storage.baseline import PROCESS_MEDIANS, append_process, entry_from_samples

    path = tmp_path / "b.json"
    first = append_process(None, entry_from_samples([10.0] * 20, "call", None, ENV))
    merge_into_file(path, [("cpu", "t.py::t", "s", first)])
    # two runs both loaded that file, then write one after the other: neither loses the other
    for median in (11.0, 12.0):
        merge_into_file(path, [("cpu", "t.py::t", "s", entry_from_samples([median] * 20, "call", None, ENV))],
                        combine=append_process)
    stored = Baselines.load(path).entry("cpu", "t.py::t", "s")
    assert stored.extra[PROCESS_MEDIANS] == [10.0, 11.0, 12.0]
    assert stored.median_ms == 11.0
