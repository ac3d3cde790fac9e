"""What the plugin itself costs in a suite with 2,000 timed stages (nothing is timed here).

A synthetic baseline file with 2,000 entries (500 tests x 4 stages, 64 stored samples each)
and synthetic current samples (200 per stage) go through every step the plugin takes around
the measurements:

  load + validate   Baselines.load of the file (what collection does once)
  look up entries   Baselines.entry for every stage (Entry.from_json)
  judge stages      verdict.judge for every stage
  judge cycles      verdict.judge_cycle for every test (its 4 stages' total)
  write baselines   merge_into_file with 2,000 updated entries (lock, re-read, dumps, atomic write)
  terminal table    report.terminal_table over every row (2,000 stages + 2,000 cold + 500 cycles)
  reports           the JSON / Markdown / HTML renderers, when present

Two mixes of current samples: "typical" (95 % of stages unchanged within noise, 3 % slower
by 30 %, 2 % noisy) and "worst" (every stage 9-12 % slower: each one is near or past a 10 %
threshold, so none can skip the bootstrap).

Run:  .venv/bin/python bench/scale.py [--stages 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_llmcycle.engine import verdict as vd  # noqa: E402
from pytest_llmcycle.storage.baseline import Baselines, Entry, merge_into_file  # noqa: E402
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult  # noqa: E402
from pytest_llmcycle.storage.baseline import entry_from_samples  # noqa: E402

STAGES_PER_TEST = 4
ENV = {"threads": 2, "torch": "2.13.0", "dtype": "float32", "device_name": "AMD EPYC"}


def synthetic(n_stages: int, mix: str, seed: int = 0):
    """(baseline file object, [(key, nodeid, stage, baseline samples, current samples)])."""
    rng = np.random.default_rng(seed)
    b = Baselines(Path("unused.json"))
    rows = []
    for i in range(n_stages):
        nodeid = f"tests/test_model_{i // 40:02d}.py::test_latency[case-{i // STAGES_PER_TEST}]"
        stage = ("prefill", "decode", "backward", "e2e")[i % STAGES_PER_TEST]
        median = float(rng.uniform(0.5, 50.0))
        base = median * (1 + 0.02 * rng.standard_normal(200))
        b.set_entry("cpu-amd-epyc", nodeid, stage, entry_from_samples(list(base), "call", median * 3, ENV))
        if mix == "worst":
            factor, spread = float(rng.uniform(1.09, 1.12)), 0.02
        else:
            u = rng.uniform()
            factor, spread = (1.3, 0.02) if u < 0.03 else (1.0, 0.15) if u < 0.05 else (1.0, 0.02)
        cur = median * factor * (1 + spread * rng.standard_normal(200))
        # whole nanoseconds in milliseconds, as the fixture's samples are (perf_counter_ns / 1e6)
        rows.append(("cpu-amd-epyc", nodeid, stage, (np.rint(np.abs(cur) * 1e6 + 1) / 1e6).tolist()))
    return b, rows


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each step")
    args = ap.parse_args()
    n, rep = args.stages, args.repeat
    lines: list[tuple[str, str, float]] = []

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baselines.json"
        for mix in ("typical", "worst"):
            b, rows = synthetic(n, mix)
            path.write_text(b.dumps())
            size = path.stat().st_size
            t, loaded = timed(lambda: Baselines.load(path), rep)
            if mix == "typical":
                lines.append(("load + validate", f"{size / 1e6:.1f} MB file", t))
            t, entries = timed(lambda: [loaded.entry(k, nid, s) for k, nid, s, _ in rows], rep)
            if mix == "typical":
                lines.append(("look up entries", f"{n} stages", t))
            t, verdicts = timed(lambda: [vd.judge(list(e.samples_ms), cur, 0.10) for e, (*_, cur) in zip(entries, rows)], 1)
            outcomes = {o: sum(v.outcome == o for v in verdicts) for o in vd.OUTCOMES}
            lines.append((f"judge stages ({mix})", ", ".join(f"{c} {o}" for o, c in outcomes.items() if c), t))

            def cycles():
                out = []
                for j in range(0, n, STAGES_PER_TEST):
                    group = range(j, min(j + STAGES_PER_TEST, n))
                    out.append(vd.judge_cycle([list(entries[i].samples_ms) for i in group], [rows[i][3] for i in group],
                                              [1.0] * len(group), 0.10))
                return out

            t, _ = timed(cycles, 1)
            lines.append((f"judge cycles ({mix})", f"{-(-n // STAGES_PER_TEST)} tests", t))

        # results rows as the fixture makes them: a stage, its cold call, and each test's cycle
        results = []
        for (key, nodeid, stage, cur), e, v in zip(rows, entries, verdicts):
            new = entry_from_samples(cur, "call", 3 * e.median_ms, ENV)
            r = StageResult(nodeid=nodeid, stage=stage, device_key=key, verdict=v, median_ms=new.median_ms,
                            q1_ms=new.q1_ms, q3_ms=new.q3_ms, n=new.n, baseline=e, cold_ms=new.cold_ms,
                            samples_ms=new.samples_ms, env=ENV, updated=True)
            results += [r, StageResult(nodeid=nodeid, stage=stage, device_key=key, kind=COLD, verdict=vd.Verdict("info", 0.1, 0.1),
                                       median_ms=new.cold_ms, n=1)]
            if stage == "e2e":
                results.append(StageResult(nodeid=nodeid, stage="T = prefill + decode + backward + e2e", device_key=key,
                                           kind=CYCLE, verdict=v, median_ms=4 * new.median_ms, n=new.n))
        pending = [(k, nid, s, entry_from_samples(cur, "call", None, ENV)) for k, nid, s, cur in rows]
        t, _ = timed(lambda: merge_into_file(path, pending), rep)
        lines.append(("write baselines", f"{n} entries merged, {path.stat().st_size / 1e6:.1f} MB", t))

        from pytest_llmcycle.reports.terminal import terminal_table

        t, table = timed(lambda: terminal_table(results), rep)
        lines.append(("terminal table", f"{len(results)} rows", t))
        meta = {"device_key": "cpu-amd-epyc", "threads": 2, "settings": {"threshold": 0.1, "alpha": 0.01, "budget_s": 1.0, "update": False}}
        for fmt in ("json", "markdown", "html"):
            try:
                from pytest_llmcycle.reports.outputs import render
            except ImportError:
                break
            try:
                t, text = timed(lambda: render(fmt, results, dict(meta)), rep)
            except Exception as e:  # a renderer's own contract (meta fields) is not what this measures
                lines.append((f"{fmt} report", f"skipped: {type(e).__name__}: {e}", float("nan")))
                continue
            lines.append((f"{fmt} report", f"{len(text) / 1e6:.1f} MB", t))

    width = max(len(a) for a, _, _ in lines)
    print(f"pytest-llmcycle plugin overhead at {n} timed stages (best of {rep}; judging once)\n")
    for step, what, t in lines:
        print(f"  {step:<{width}}  {t * 1e3:8.0f} ms   {what}")
    typical = sum(t for s, _, t in lines if "worst" not in s and t == t)
    print(f"\n  total, typical mix: {typical:.2f} s")


if __name__ == "__main__":
    main()
