"""What the plugin costs a real pytest run with 2,000 timed stages, end to end.

A generated suite of 500 tests records 4 stages each (2,000 stages) through the public
``llmcycle.record`` with synthetic measurements (200 samples, drawn from a seeded RNG), so
nothing is timed and the whole difference between two runs is the plugin: its hooks, the
fixture, loading the baseline file, judging every stage and every cycle, the terminal table,
writing the baselines and the report files.

Each configuration is a fresh ``python -m pytest`` process; its wall time is compared with the
same suite run with ``-p no:llmcycle`` and a stub fixture whose ``record`` does nothing (the
tests still build the same measurements). The overhead is the difference of the medians.

Mixes of current samples: "unchanged" (every stage as recorded, new noise), "typical" (as in
bench/scale.py: 95 % of stages unchanged within noise, 3 % slower by 30 %, 2 % noisy) and
"worst" (every stage 9-12 % slower: near or past a 10 % threshold, so none skips the
bootstrap, every one is re-measured and every test fails). Failing tests cost pytest itself
something (reports, the FAILURES section), which is counted here. The machine check is off:
it would run the real reference workload, which is measurement, not overhead.

Run:  .venv/bin/python bench/scale_suite.py [--tests 500] [--runs 5]
      (PYTHONPATH=<another checkout> times that checkout's plugin with the same suite)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = '''
import os, random

import numpy  # noqa: F401 - an LLM suite has it loaded (torch imports it); the plugin's verdicts use it
import pytest
from pytest_llmcycle.measure.timing import Measurement

STAGES = ("prefill", "decode", "backward", "e2e")
MIX = os.environ.get("MIX", "base")


_rng = random.Random(7)
_Z = [_rng.gauss(0, 1) for _ in range(4096)]


def make(i, j, rep):
    """A measurement of 200 samples: cheap to build (a slice of one pool of normals), so the
    re-measure a suspected regression asks for costs the test next to nothing."""
    u = random.Random(i * 4 + j).random()
    median = (0.5 + 49.5 * u) * 1e6  # ns; the same for every mix
    factor, spread = 1.0, 0.02
    if MIX == "worst":
        factor = 1.09 + 0.03 * random.Random(i * 4 + j + 10**7).random()
    elif MIX == "typical":
        v = random.Random(i * 4 + j + 10**6).random()
        factor, spread = (1.3, 0.02) if v < 0.03 else (1.0, 0.15) if v < 0.05 else (1.0, 0.02)
    off = (i * 131 + j * 17 + rep * 1009 + len(MIX)) % (len(_Z) - 200)
    # whole nanoseconds, as perf_counter_ns gives them
    xs = tuple(float(round(abs(median * factor * (1 + spread * z)))) + 1.0 for z in _Z[off:off + 200])
    return Measurement(samples_ns=xs, cold_ns=3 * median, rounds=200, spent_s=sum(xs) / 1e9)


@pytest.mark.parametrize("i", range(N_TESTS))
def test_model(llmcycle, i):
    for j, stage in enumerate(STAGES):
        llmcycle.record(stage, make(i, j, 0), remeasure=lambda: make(i, j, 1))
'''

STUB = '''
import pytest


class _Stub:
    def record(self, stage, measurement, **kw):
        return None


@pytest.fixture
def llmcycle():
    return _Stub()
'''


def run(work: Path, args: list[str], mix: str) -> tuple[float, subprocess.CompletedProcess]:
    # bytecode caching on, as on a developer machine or a CI runner (this sandbox turns it off,
    # which makes every run recompile, with assertion rewriting, whatever it imports)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # the suite's folder first; a PYTHONPATH given to the bench stays (to time another checkout)
    env.update(MIX=mix, PYTHONPATH=os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])), PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:xdist",
           "-p", "no:randomly", "-p", "no:hypothesispytest", "test_suite.py", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def median_time(work: Path, args: list[str], mix: str, runs: int, ok_codes=(0, 1)) -> float:
    times = []
    for _ in range(runs):
        t, proc = run(work, args, mix)
        if proc.returncode not in ok_codes:
            raise SystemExit(f"pytest {' '.join(args)} (mix {mix}) exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        times.append(t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", type=int, default=500, help="tests of 4 stages each (default 500: 2,000 stages)")
    ap.add_argument("--runs", type=int, default=5, help="runs per configuration (median)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmcycle-scale-"))
    (work / "test_suite.py").write_text(SUITE.replace("N_TESTS", str(args.tests)))
    (work / "stub_llmcycle.py").write_text(STUB)
    (work / "pytest.ini").write_text("[pytest]\nllmcycle_machine_check = false\n")
    plugin = ["--llmcycle-device", "cpu"]
    stub = ["-p", "no:llmcycle", "-p", "stub_llmcycle"]
    reports = ["--llmcycle-report", "r.json", "--llmcycle-report", "r.html", "--llmcycle-report", "r.md"]

    _, proc = run(work, plugin + ["--llmcycle-update"], "record")  # record the 2,000 baselines once (own noise)
    assert proc.returncode == 0, proc.stdout[-3000:]
    size = (work / ".llmcycle" / "baselines.json").stat().st_size
    run(work, stub, "typical")  # warm: bytecode caches written
    bare = median_time(work, stub, "typical", args.runs)
    rows: list[tuple[str, float]] = []
    for mix, what in (("base", "every stage unchanged"), ("typical", "typical mix: 3 % of stages regress"),
                      ("worst", "worst mix: every stage 9-12 % slower")):
        rows.append((f"check run, {what}", median_time(work, plugin, mix, args.runs)))
    rows.append(("check run + JSON, HTML, Markdown reports", median_time(work, plugin + reports, "typical", args.runs)))
    for name in ("r.json", "r.html", "r.md"):
        rows.append((f"  {name}: {(work / name).stat().st_size / 1e6:.1f} MB", float("nan")))
    baseline_text = (work / ".llmcycle" / "baselines.json").read_text()
    rows.append(("--llmcycle-update --llmcycle-update-all (rewrites all 2,000)",
                 median_time(work, plugin + ["--llmcycle-update", "--llmcycle-update-all"], "typical", args.runs)))
    (work / ".llmcycle" / "baselines.json").write_text(baseline_text)

    n = args.tests * 4
    print(f"pytest-llmcycle overhead in a real run: {args.tests} tests x 4 stages = {n} stages, "
          f"baseline file {size / 1e6:.1f} MB; median of {args.runs} fresh processes each\n")
    print(f"  {'same suite, plugin off (stub fixture)':<62} {bare:6.2f} s")
    for name, t in rows:
        if t != t:
            print(f"  {name}")
        else:
            print(f"  {name:<62} {t:6.2f} s   overhead {t - bare:+.2f} s ({(t - bare) / n * 1e3:.2f} ms/stage)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
