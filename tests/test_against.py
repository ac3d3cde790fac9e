"""--llmcycle-against: the base revision runs beside the head, in real git repositories made here.

The timed workloads are pure Python (sum over a range) so the tests need no torch model; the
planted slowdown is 2x (the issue's case), the threshold wide (30 %) so that the verdicts
hold with margin on a loaded 2-core machine. What the paired rule does with small changes is
the benchmark's job (bench/against.py), not these tests'.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llmcycle.engine import paired as pm
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.run import basetree
from pytest_llmcycle.run.peers import BASE, HEAD, Participant, _Schedule

PKG_BASE = '''\
def work(n=20000):
    return sum(range(n))


def steady(n=20000):
    return sum(range(n))


def old_only(n=5000):
    return sum(range(n))
'''

TEST_BASE = '''\
from mypkg import old_only, steady, work


def test_stages(llmcycle):
    llmcycle.measure("work", work)
    llmcycle.measure("removed", old_only)
    llmcycle.measure("steady", steady)
    for _ in range(12):
        with llmcycle.stage("block"):
            steady()


def test_untimed():
    assert True
'''

# the head: "work" does twice the work, "removed" is gone, "added" is new
PKG_HEAD = PKG_BASE.replace("def work(n=20000):\n    return sum(range(n))", "def work(n=20000):\n    return sum(range(2 * n))")
TEST_HEAD = '''\
from mypkg import steady, work


def test_stages(llmcycle):
    llmcycle.measure("work", work)
    llmcycle.measure("steady", steady)
    llmcycle.measure("added", lambda: sum(range(3000)))
    for _ in range(12):
        with llmcycle.stage("block"):
            steady()


def test_untimed():
    assert True
'''


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, pkg: str = PKG_BASE, test: str = TEST_BASE) -> str:
    """A git repository with a src/ package and a timed test; returns the first commit's sha."""
    (root / "src" / "mypkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\npythonpath = ["src"]\n')
    (root / "src" / "mypkg" / "__init__.py").write_text(pkg)
    (root / "tests" / "test_lat.py").write_text(test)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    return _git(root, "rev-parse", "HEAD")


def run_pytest(root: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=root, capture_output=True, text=True, timeout=timeout, env=env,
    )


# ----------------------------------------------------------------------------- real runs


def test_head_against_its_base_revision(tmp_path: Path) -> None:
    """2x slower stage fails, unchanged passes, an added stage is new, a removed one is listed;
    untimed tests do not run in the base; the base is named everywhere."""
    sha = make_repo(tmp_path)
    (tmp_path / "src" / "mypkg" / "__init__.py").write_text(PKG_HEAD)
    (tmp_path / "tests" / "test_lat.py").write_text(TEST_HEAD)
    report = tmp_path / "out" / "report.md"
    r = run_pytest(tmp_path, "--llmcycle-against", "HEAD", "--llmcycle-budget", "0.3", "--llmcycle-threshold", "0.3",
                   "-rA", f"--llmcycle-report={report}", f"--llmcycle-report={report.with_suffix('.json')}")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    label = f"HEAD @ {sha[:7]}"
    assert f"llmcycle: against {label}" in out  # the header
    assert f"stage 'work' regressed against {label}" in out  # the failure message names the base
    assert "paired rounds" in out
    rows = {
        line.split()[1]: line for line in out.splitlines()
        if line.startswith("tests/test_lat.py::test_stages ") and line.split()[2] != "(cold)"
    }
    assert rows["work"].rstrip().endswith("regressed"), rows
    assert rows["added"].rstrip().endswith("new"), rows
    assert rows["block"].split()[-1] in ("ok", "inconclusive", "improved"), rows  # a block stage, unchanged
    assert "only in the base (removed): tests/test_lat.py::test_stages removed" in out
    # the stage removed before "steady" does not leave the rest of the test unjudged: the base
    # catches up, and "steady" and "block" are timed beside it
    assert rows["steady"].split()[-1] in ("ok", "inconclusive", "improved"), rows
    assert "PASSED tests/test_lat.py::test_untimed" in out
    md = report.read_text()
    assert f"this pull request against its base `{label}`" in md
    # what timing a paired stage cost: every process's turns, so more than head 0's own measurement
    doc = {(x["stage"], x["kind"]): x for x in json.loads(report.with_suffix(".json").read_text())["results"]}
    for stage in ("work", "steady"):
        row = doc[(stage, "stage")]
        assert row["section_s"] is not None and row["section_s"] >= row["spent_s"] > 0, row
    assert "removed" in md
    # the worktree is cached by commit inside the git directory, and registered with git
    cached = tmp_path / ".git" / "llmcycle" / "worktrees" / sha
    assert (cached / "src" / "mypkg" / "__init__.py").read_text() == PKG_BASE
    assert str(cached) in _git(tmp_path, "worktree", "list")


def test_unknown_revision_is_one_clear_line(tmp_path: Path) -> None:
    make_repo(tmp_path)
    r = run_pytest(tmp_path, "--llmcycle-against", "origin/nope")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "--llmcycle-against origin/nope: no such revision in" in r.stderr
    assert "fetch-depth: 0" in r.stderr


def test_not_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_x(llmcycle):\n    llmcycle.measure('x', lambda: None)\n")
    r = run_pytest(tmp_path, "--llmcycle-against", "main")
    assert r.returncode == 4
    assert "is not in a git repository" in r.stderr and "give a checkout of the base" in r.stderr


def test_base_that_fails_to_import(tmp_path: Path) -> None:
    """The base's tests cannot be collected: one line naming the file and the error, exit 4."""
    make_repo(tmp_path, pkg="raise ImportError('broken in the base')\n")
    _git(tmp_path, "tag", "broken")
    (tmp_path / "src" / "mypkg" / "__init__.py").write_text(PKG_BASE)
    # a baseline file is not read in this mode: a corrupt one (here in the head) stops nothing
    (tmp_path / ".llmcycle").mkdir()
    (tmp_path / ".llmcycle" / "baselines.json").write_text("{not json")
    r = run_pytest(tmp_path, "--llmcycle-against", "broken", "--llmcycle-budget", "0.2", "--llmcycle-against-pairs", "1")
    assert r.returncode == 4, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert any("the base's tests failed to collect: tests/test_lat.py" in line and "broken in the base" in line for line in err), r.stderr


# each process logs the CPUs its timed calls ran on, and the CPUs it has after the test
TEST_PINNED = TEST_BASE.replace(
    "def test_untimed():",
    """def test_logs_its_cpus(llmcycle):
    import os

    seen = set()

    def timed():
        seen.add(tuple(sorted(os.sched_getaffinity(0))))
        return steady()

    llmcycle.measure("pinned", timed)
    with open(os.environ["PIN_LOG"], "a") as f:
        f.write(f"{sorted(seen)} {sorted(os.sched_getaffinity(0))}\\n")


def test_untimed():""",
)


def test_a_checkout_folder_as_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path instead of a revision, run on a given Python: unchanged code against a copy of itself
    is not a regression. Every process times on the same CPU and gets its CPUs back afterwards."""
    base = tmp_path / "base"
    head = tmp_path / "head"
    base.mkdir()
    make_repo(base, test=TEST_PINNED)
    subprocess.run(["git", "clone", "-q", str(base), str(head)], check=True)
    log = tmp_path / "cpus.log"
    monkeypatch.setenv("PIN_LOG", str(log))
    # the base on a Python given by path (here the same one: a venv with another torch in practice)
    r = run_pytest(head, "--llmcycle-against=../base", "--llmcycle-budget", "0.2", "--llmcycle-threshold", "0.3",
                   "--llmcycle-against-pairs", "1", "--llmcycle-threads", "1", f"--llmcycle-against-python={sys.executable}")
    out = r.stdout + r.stderr
    assert "regressed" not in out.split("llmcycle: this checkout against")[-1], out
    assert r.returncode == 0, out
    assert "against ../base @ " in out
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines  # head 0, base 1, head 1
    if len(allowed) >= 2:  # one thread times: every process on the last CPU, all of them given back after
        assert f"taking turns round by round on CPU {allowed[-1]};" in out
        assert set(lines) == {f"[({allowed[-1]},)] {allowed}"}, lines


def test_ctrl_c_stops_the_base_and_leaves_no_half_made_worktree(tmp_path: Path) -> None:
    sha = make_repo(tmp_path)
    # a leftover of a run killed while checking out (its process is gone): removed by the next run
    cache = tmp_path / ".git" / "llmcycle" / "worktrees"
    cache.mkdir(parents=True)
    stale = cache / f"{sha}.tmp999999999"
    _git(tmp_path, "worktree", "add", "-q", "--detach", str(stale), sha)
    (tmp_path / "tests" / "test_lat.py").write_text(TEST_BASE.replace("def test_untimed", "def test_zz_untimed"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    p = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--llmcycle-against", "HEAD",
         "--llmcycle-budget", "30", "--llmcycle-against-pairs", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert p.stdout is not None
        for line in p.stdout:  # wait until a stage is being timed beside the base
            if "llmcycle: timing" in line:
                break
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2, rest  # pytest's "interrupted"
    assert not stale.exists()
    assert "tmp999999999" not in _git(tmp_path, "worktree", "list")
    assert (cache / sha).is_dir()  # the complete worktree stays cached for the next run
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "--llmcycle-peer" in line and str(tmp_path) in line]


# ----------------------------------------------------------------------------- the parts


def test_schedule_is_abba_per_pair() -> None:
    members = [Participant(BASE, 0), Participant(HEAD, 0), Participant(BASE, 1), Participant(HEAD, 1)]
    s = _Schedule(members)
    order = [s.next(lambda p: True) for _ in range(16)]
    names = [f"{p.role[0]}{p.index}" for p in order]
    assert names[:8] == ["b0", "h0", "h0", "b0", "b1", "h1", "h1", "b1"]
    assert names[8:16] == ["h0", "b0", "b0", "h0", "h1", "b1", "b1", "h1"]
    # a member that is not waiting is passed over, the order goes on
    assert s.next(lambda p: p.role == HEAD).role == HEAD


def _pairs(rng, ratio: float, k: int = 2, n: int = 60, sd: float = 0.05, mode_sd: float = 0.0):
    import math

    out = []
    for _ in range(k):
        mode = rng.normal(0.0, mode_sd)
        out.append([math.log(ratio) + mode + x for x in rng.normal(0.0, sd, n)])
    return out


def test_paired_interval_covers_the_true_ratio_at_its_rate() -> None:
    """Synthetic pairs with a known ratio and per-process modes at the floor: the 95 % interval
    holds the true ratio in about 95 % of 400 cases (and never far below)."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(400):
        truth = [1.0, 1.1, 0.9, 1.5][i % 4]
        est = pm.estimate(_pairs(rng, truth, mode_sd=pm.PROCESS_FLOOR))
        assert est is not None
        hits += est.lo <= truth <= est.hi
    assert 0.90 <= hits / 400 <= 1.0


def test_paired_verdicts_from_synthetic_pairs() -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    rules = vd.Rules(0.05, 0.01, vd.CONFIRM_PAIRS)

    def decide(ratio: float, **kw) -> vd.Verdict:
        logs = tuple(tuple(p) for p in _pairs(rng, ratio, **kw))
        base = vd.Evidence((1.0,) * 10)
        cur = vd.Evidence((ratio,) * 10)
        return vd.decide(vd.Case(base, cur, rules, paired=vd.Paired(logs, "origin/main @ 1a2b3c4")))

    slow = decide(1.25)
    assert slow.outcome == vd.REGRESSED and "slower than origin/main @ 1a2b3c4" in slow.reason
    assert decide(1.0).outcome == vd.OK
    assert decide(0.7).outcome == vd.IMPROVED
    # the pairs disagree (one +30 %, one -10 %): not gated
    logs = (tuple(np.log(1.3) + rng.normal(0, 0.01, 40)), tuple(np.log(0.9) + rng.normal(0, 0.01, 40)))
    v = vd.decide(vd.Case(vd.Evidence((1.0,)), vd.Evidence((1.1,)), rules, paired=vd.Paired(logs, "b")))
    assert v.outcome != vd.REGRESSED
    # counters: head against base exactly, never "not comparable" (environments may differ)
    v = vd.decide(vd.Case(
        vd.Evidence((1.0,), env={"torch": "2.12"}, counters={"flops": 1000}),
        vd.Evidence((1.0,), env={"torch": "2.13"}, counters={"flops": 10_000}),
        rules, paired=vd.Paired(tuple(tuple(p) for p in _pairs(rng, 1.0)), "b"),
    ))
    assert v.outcome == vd.REGRESSED and v.decided_by == vd.BY_COUNTERS
    # a stage only in the head
    v = vd.decide(vd.Case(None, vd.Evidence((1.0,)), rules, paired=vd.Paired(base_label="main @ 1")))
    assert v.outcome == vd.NEW and "not in main @ 1" in v.reason


def test_basetree_errors(tmp_path: Path) -> None:
    with pytest.raises(basetree.BaseTreeError, match="not in a git repository"):
        basetree.resolve("main", tmp_path, tmp_path)
    make_repo(tmp_path / "r")
    with pytest.raises(basetree.BaseTreeError, match="no such revision"):
        basetree.resolve("nope", tmp_path / "r", tmp_path / "r")
    with pytest.raises(basetree.BaseTreeError, match="this run's rootdir"):
        basetree.resolve(".", tmp_path / "r", tmp_path / "r")


def test_refused_combinations_and_a_missing_python(tmp_path: Path) -> None:
    """One line each: -n (xdist), --llmcycle-update, an --llmcycle-against-python that does not exist."""
    make_repo(tmp_path)
    r = run_pytest(tmp_path, "--llmcycle-against", "HEAD", "-n", "2")
    assert r.returncode == 4 and "cannot run under pytest-xdist (-n)" in r.stderr, r.stderr
    r = run_pytest(tmp_path, "--llmcycle-against", "HEAD", "--llmcycle-update")
    assert r.returncode == 4 and "--llmcycle-against and --llmcycle-update exclude each other" in r.stderr, r.stderr
    r = run_pytest(tmp_path, "--llmcycle-against", "HEAD", f"--llmcycle-against-python={tmp_path / 'no' / 'python'}")
    assert r.returncode == 4 and "no such file; give the Python of the base's environment" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- busy neighbours: CPU time


def test_cpu_basis_only_where_neighbours_took_the_bases_cpu() -> None:
    assert pm.cpu_basis([0.99] * 9) == ""  # quiet: wall time
    busy = pm.cpu_basis([0.55] * 9)
    assert busy.startswith("compared by CPU time") and "45%" in busy
    assert pm.cpu_basis([]) == ""  # no CPU times (a block stage): wall time


def _rec(cpu_ms: list[float], shares: list[float], threads: int = 1) -> dict:
    """A record whose k-th round spent ``cpu_ms[k]`` of CPU in ``cpu_ms[k] / shares[k]`` of wall time."""
    walls = [c / s for c, s in zip(cpu_ms, shares)]
    turns = list(range(len(walls)))[::-1]  # sent in any order: matched by turn number
    return {
        "samples_ns": [w * 1e6 for w in walls[::-1]], "rounds": turns, "unit": "call", "env": {"threads": threads},
        "counters": {}, "cold_ns": None,
        "cpu": [[int(w * 1e6), int(c * 1e6 * threads)] for w, c in zip(walls[::-1], cpu_ms[::-1])],
    }


class _Coord:
    base_label = "origin/main @ 1a2b3c4"
    base_failures: dict = {}

    def __init__(self, recs: dict) -> None:
        self.recs = recs

    def records(self, nodeid, stage, section):
        return self.recs


def test_rounds_stretched_by_neighbours_are_compared_by_their_cpu_time() -> None:
    """Synthetic records: base and head spend the same CPU each round, their wall times stretched
    at random (a busy neighbour). By wall time the pairs scatter; by CPU time the ratio is 1. A head
    that spends 1.5x the CPU is caught either way."""
    from pytest_llmcycle.run import against

    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(11)
    rules = vd.Rules(0.05, 0.01, vd.CONFIRM_PAIRS)

    def recs(head_factor: float, head_share: tuple = (0.35, 0.8)) -> dict:
        out = {}
        for i in (1, 2):
            out[("base", i)] = _rec([10.0] * 20, list(rng.uniform(0.35, 0.8, 20)))
            out[("head", i)] = _rec([10.0 * head_factor] * 20, list(rng.uniform(*head_share, 20)))
        return out

    mine = _rec([10.0] * 20, [1.0] * 20)
    same = against.judge(_Coord(recs(1.0)), "t::x", "forward", "forward", mine, rules, on_cpu=True)
    assert same.verdict.outcome == vd.OK and "compared by CPU time" in same.verdict.reason, same.verdict
    assert same.estimate is not None and abs(same.estimate.ratio - 1.0) < 1e-6
    slower = against.judge(_Coord(recs(1.5)), "t::x", "forward", "forward", mine, rules, on_cpu=True)
    assert slower.verdict.outcome == vd.REGRESSED, slower.verdict
    # on a GPU the CPU time says nothing about the device's work: wall time (events) as always
    gpu = against.judge(_Coord(recs(1.0)), "t::x", "forward", "forward", mine, rules, on_cpu=False)
    assert "CPU time" not in gpu.verdict.reason
    # a head that waits (its rounds hold the CPU half as much as the base's): the same CPU time, but
    # slower by wall time: inconclusive and said so, never ok
    waits = against.judge(_Coord(recs(1.0, head_share=(0.15, 0.3))), "t::x", "forward", "forward", mine, rules, on_cpu=True)
    assert waits.verdict.outcome == vd.INCONCLUSIVE, waits.verdict
    assert "by wall time +" in waits.verdict.reason and "a wait in the head" in waits.verdict.reason


def test_round_shares_divide_by_the_timing_threads_and_need_every_round() -> None:
    from pytest_llmcycle.run import against

    rec = _rec([4.0, 4.0], [0.5, 1.0], threads=2)
    assert against.round_shares(rec) == pytest.approx([0.5, 1.0])
    assert against.round_shares({**rec, "cpu": rec["cpu"][:1]}) == []  # a round without its CPU time: none
    assert against.round_shares({**rec, "cpu": []}) == []
