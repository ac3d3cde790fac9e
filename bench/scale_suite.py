"""What the plugin costs a real pytest run with 2,000 timed stages, end to end.

A generated suite of 500 tests records 4 stages each (2,000 stages) through the public
``llmcycle.record`` with synthetic measurements (200 samples, drawn from a seeded RNG), so
nothing is timed and the whole difference between two runs is the plugin: its hooks, the
fixture, loading the baseline file, judging every stage and every cycle, the terminal table,
writing the baselines and the report files.

Each configuration is a fresh ``python -m pytest`` process; it is compared with the same suite
run with ``-p no:llmcycle`` and a stub fixture whose ``record`` does nothing (the tests still
build the same measurements). Every round runs the stub once and then each configuration once
per checkout, interleaved, so a machine that slows down mid-run slows all of them alike; the
overhead of a run is its figure minus the stub's of the same round, reported as the median and
the range over rounds. Three figures per process: wall time, CPU time (user + system, from
``wait4``: steadier than wall time on a shared machine) and peak memory (``ru_maxrss``).

Mixes of current samples: "unchanged" (every stage as recorded, new noise), "typical" (as in
bench/scale.py: 95 % of stages unchanged within noise, 3 % slower by 30 %, 2 % noisy) and
"worst" (every stage 9-12 % slower: near or past a 10 % threshold, so none skips the
bootstrap, every one is re-measured and every test fails). Failing tests cost pytest itself
something (reports, the FAILURES section), which is counted here. The machine check is off:
it would run the real reference workload, which is measurement, not overhead.

Run:  .venv/bin/python bench/scale_suite.py [--tests 500] [--runs 5]
      [--checkout before=/path/to/old/checkout --checkout now=.]   (side by side, interleaved)
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


def run(work: Path, args: list[str], mix: str, pythonpath: str | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """One fresh pytest process: ``({"wall": s, "cpu": s, "rss": MiB}, the process)``."""
    # bytecode caching on, as on a developer machine or a CI runner (this sandbox turns it off,
    # which makes every run recompile, with assertion rewriting, whatever it imports)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # the suite's folder first, then the checkout whose plugin is timed (else whatever is installed)
    env.update(MIX=mix, PYTHONPATH=os.pathsep.join(filter(None, [str(work), pythonpath, os.environ.get("PYTHONPATH")])),
               PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:xdist",
           "-p", "no:randomly", "-p", "no:hypothesispytest", "test_suite.py", *args]
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    proc = subprocess.CompletedProcess(cmd, p.returncode, text, "")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss / 1024}, proc


def checked(work: Path, args: list[str], mix: str, pythonpath: str | None, ok_codes=(0, 1)) -> dict:
    m, proc = run(work, args, mix, pythonpath)
    if proc.returncode not in ok_codes:
        raise SystemExit(f"pytest {' '.join(args)} (mix {mix}) exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return m


PLUGIN = ["--llmcycle-device", "cpu"]
STUB_ARGS = ["-p", "no:llmcycle", "-p", "stub_llmcycle"]
REPORTS = ["--llmcycle-report", "r.json", "--llmcycle-report", "r.html", "--llmcycle-report", "r.md"]
UPDATE_ALL = ["--llmcycle-update", "--llmcycle-update-all"]
#: (name, arguments, mix, whether it rewrites the baseline file)
CONFIGS = [
    ("check, every stage unchanged", PLUGIN, "base", False),
    ("check, typical mix (3 % regress, their tests fail)", PLUGIN, "typical", False),
    ("check, worst mix (every stage 9-12 % slower)", PLUGIN, "worst", False),
    ("check + JSON, HTML, Markdown reports (typical)", PLUGIN + REPORTS, "typical", False),
    ("--llmcycle-update-all (rewrites all 2,000)", PLUGIN + UPDATE_ALL, "typical", True),
    ("--llmcycle-update-all + the three reports", PLUGIN + UPDATE_ALL + REPORTS, "typical", True),
]


def spread(values: list[float], fmt: str) -> str:
    """Median and range, e.g. ``+0.61 s (0.55..0.70)``."""
    number, unit = fmt.split(" ", 1) if " " in fmt else (fmt, "")
    return (f"{number.format(statistics.median(values))} {unit} "
            f"({number.format(min(values))}..{number.format(max(values))})").replace("  ", " ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", type=int, default=500, help="tests of 4 stages each (default 500: 2,000 stages)")
    ap.add_argument("--runs", type=int, default=5, help="rounds (each runs every configuration once per checkout)")
    ap.add_argument("--checkout", action="append", default=[], metavar="LABEL=PATH",
                    help="a checkout whose plugin is timed (repeat to compare side by side; default: this one)")
    ap.add_argument("--only", action="append", default=[], metavar="N",
                    help="run only configuration N (0-based index into the table; repeatable)")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    checkouts = [tuple(c.split("=", 1)) for c in args.checkout] or [("this checkout", here)]
    configs = [c for i, c in enumerate(CONFIGS) if not args.only or str(i) in args.only]
    works: dict[str, Path] = {}
    sizes: dict[str, dict[str, int]] = {}
    for label, path in checkouts:
        work = Path(tempfile.mkdtemp(prefix="llmcycle-scale-"))
        (work / "test_suite.py").write_text(SUITE.replace("N_TESTS", str(args.tests)))
        (work / "stub_llmcycle.py").write_text(STUB)
        (work / "pytest.ini").write_text("[pytest]\nllmcycle_machine_check = false\n")
        # record the 2,000 baselines once, with this checkout (its own file format)
        checked(work, PLUGIN + ["--llmcycle-update"], "record", str(Path(path).resolve()), ok_codes=(0,))
        works[label] = work
        run(work, STUB_ARGS, "typical")  # warm: bytecode caches written
        run(work, PLUGIN, "typical", str(Path(path).resolve()))
    first = works[checkouts[0][0]]
    size = (first / ".llmcycle" / "baselines.json").stat().st_size
    stub: list[dict] = []
    got: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.runs):
        stub.append(checked(first, STUB_ARGS, "typical", None))
        for name, cfg_args, mix, rewrites in configs:
            for label, path in checkouts:
                work = works[label]
                saved = (work / ".llmcycle" / "baselines.json").read_bytes() if rewrites else None
                m = checked(work, cfg_args, mix, str(Path(path).resolve()))
                if saved is not None:
                    (work / ".llmcycle" / "baselines.json").write_bytes(saved)
                if "r.json" in cfg_args:
                    sizes[label] = {n: (work / n).stat().st_size for n in ("r.json", "r.html", "r.md")}
                got.setdefault((name, label), []).append(m)

    n = args.tests * 4
    load = os.getloadavg()
    print(f"pytest-llmcycle overhead in a real run: {args.tests} tests x 4 stages = {n} stages, baseline file "
          f"{size / 1e6:.1f} MB; {args.runs} interleaved rounds; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(f"plugin off (stub fixture): wall {spread([m['wall'] for m in stub], '{:.2f} s')}, "
          f"CPU {spread([m['cpu'] for m in stub], '{:.2f} s')}, peak RSS {spread([m['rss'] for m in stub], '{:.0f} MiB')}\n")
    print("| run | checkout | wall overhead | CPU overhead | peak RSS over the stub |")
    print("|---|---|---|---|---|")
    for name, *_ in configs:
        for label, _ in checkouts:
            ms = got[(name, label)]
            d = {k: [m[k] - s[k] for m, s in zip(ms, stub)] for k in ("wall", "cpu", "rss")}
            print(f"| {name} | {label} | {spread(d['wall'], '{:+.2f} s')} | {spread(d['cpu'], '{:+.2f} s')} "
                  f"| {spread(d['rss'], '{:+.0f} MiB')} |")
    for label, s in sizes.items():
        print(f"\nreports ({label}): " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
