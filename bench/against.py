"""Base against head on one machine (--llmcycle-against) next to the committed-baseline mode and
pytest-benchmark, on the same workloads, in one interleaved run.

Workloads: a tiny Llama (2 layers, hidden 128, random weights from a config) built in each pytest
process: ``forward`` (one forward over 32 tokens) and ``decode`` (``generate`` of 8 new tokens
after a 32-token prompt, greedy, KV cache). The head's code is slowed by a forward hook that
busy-waits ``SLOW`` times the forward's own duration (0, +5, +10, +25 %); the base revision (a
commit of a throw-away git repository) has ``SLOW = 0``.

Per repetition, every cell (slowdown x quiet/busy) runs once, cells in a shuffled order, and in
each cell the three methods in a shuffled order, each a fresh pytest run at threshold 5 %:

* ``against``: ``pytest --llmcycle-against HEAD`` (the base is the committed SLOW = 0),
* ``committed``: ``pytest`` against a baseline file recorded from the base once, quiet, at the start,
* ``pytest-benchmark``: ``--benchmark-compare=0001 --benchmark-compare-fail=median:5%`` against a
  run of the base saved once at the start.

"busy" runs a busy-loop process per core during the cell. A run "fails" when pytest exits 1.
Writes a Markdown table (false failures at 0, detections otherwise) and each run's outcome.

    python bench/against.py --reps 10 --out bench/results/against.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SLOWS = (0.0, 0.05, 0.10, 0.25)
LOADS = ("quiet", "busy")
METHODS = ("against", "committed", "pytest-benchmark")

PKG = '''\
import time

import torch

SLOW = {slow!r}


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    if SLOW:
        state = {{}}

        def pre(mod, args, kwargs):
            state["t0"] = time.perf_counter_ns()

        def post(mod, args, kwargs, out):
            t1 = time.perf_counter_ns()
            until = t1 + SLOW * (t1 - state["t0"])
            while time.perf_counter_ns() < until:
                pass

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)
    return model


IDS = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))


def forward(model):
    with torch.inference_mode():
        return model(IDS)


def decode(model):
    with torch.inference_mode():
        return model.generate(IDS, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
'''

CONFTEST = '''\
import pytest
import torch


@pytest.fixture(scope="session")
def model():
    torch.set_num_threads(1)
    from benchmod import build

    return build()
'''

TESTS = '''\
import pytest

from benchmod import decode, forward


@pytest.mark.llmcycle(counters=False)
def test_forward(llmcycle, model):
    llmcycle.measure("forward", lambda: forward(model))


@pytest.mark.llmcycle(counters=False)
def test_decode(llmcycle, model):
    llmcycle.measure("decode", lambda: decode(model))


def test_bench_forward(benchmark, model):
    benchmark(lambda: forward(model))


def test_bench_decode(benchmark, model):
    benchmark(lambda: decode(model))
'''


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_project(root: Path) -> None:
    (root / "src" / "benchmod").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\npythonpath = ["src"]\naddopts = "-p no:cacheprovider"\n'
    )
    (root / "src" / "benchmod" / "__init__.py").write_text(PKG.format(slow=0.0))
    (root / "tests" / "conftest.py").write_text(CONFTEST)
    (root / "tests" / "test_llm.py").write_text(TESTS)
    git(root, "init", "-q")
    git(root, "-c", "user.email=b@e", "-c", "user.name=b", "add", "-A")
    git(root, "-c", "user.email=b@e", "-c", "user.name=b", "commit", "-qm", "base")


def set_slow(root: Path, slow: float) -> None:
    (root / "src" / "benchmod" / "__init__.py").write_text(PKG.format(slow=slow))


def pytest_run(root: Path, args: list[str], junit: Path | None = None) -> tuple[int, float, float]:
    """(exit code, wall seconds, summed call-phase seconds from JUnit)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *args]
    if junit is not None:
        cmd.append(f"--junitxml={junit}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    calls = 0.0
    if junit is not None and junit.exists():
        calls = sum(float(tc.get("time", 0)) for tc in ET.parse(junit).getroot().iter("testcase"))
    if p.returncode not in (0, 1):
        print(p.stdout[-3000:], p.stderr[-2000:], file=sys.stderr)
    return p.returncode, wall, calls


def stage_outcomes(report: Path) -> dict:
    """stage -> (outcome, ratio, per-pair ratios from the reason) of a JSON report, when there is one."""
    import re

    if not report.exists():
        return {}
    out = {}
    for row in json.loads(report.read_text()).get("results", []):
        if row.get("kind") != "stage":
            continue
        v = row["verdict"]
        pairs = re.search(r"process pairs?: ([^)]*)\)", v.get("reason") or "")
        out[row["stage"]] = (v["outcome"], v.get("ratio"), pairs.group(1) if pairs else "")
    return out


def timed_part(report: Path) -> float | None:
    """The run's timed part: the stages' ``section_s`` summed (each stage's timed sections, with
    --llmcycle-against every process's turns until the base's records are in), from its JSON report."""
    if not report.exists():
        return None
    xs = [row.get("section_s") for row in json.loads(report.read_text()).get("results", []) if row.get("kind") == "stage"]
    return sum(x for x in xs if x) if any(xs) else None


def method_args(method: str, threshold: float, budget: float) -> list[str]:
    common = [f"--llmcycle-threshold={threshold}", f"--llmcycle-budget={budget}"]
    if method == "against":
        return ["-k", "not bench", "--llmcycle-against", "HEAD", *common]
    if method == "committed":
        return ["-k", "not bench", *common]
    return ["-k", "bench", "--benchmark-only", f"--benchmark-max-time={budget}", "--benchmark-compare=0001",
            f"--benchmark-compare-fail=median:{threshold * 100:g}%"]


class Busy:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Busy":
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--out", default="bench/results/against.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default="", help="load:slowdown pairs, e.g. quiet:0,busy:0.1 (default: all 8)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="llmcycle-against-bench-"))
    root = work / "proj"
    make_project(root)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"recording the committed baseline and the pytest-benchmark run of the base (load {load()})", flush=True)
    rc, _, _ = pytest_run(root, ["-k", "not bench", "--llmcycle-update", f"--llmcycle-budget={a.budget}"])
    assert rc == 0, "recording failed"
    rc, _, _ = pytest_run(root, ["-k", "bench", "--benchmark-only", f"--benchmark-max-time={a.budget}", "--benchmark-save=base"])
    assert rc == 0, "pytest-benchmark save failed"
    results: list[dict] = []
    cells = [(s, ld) for s in SLOWS for ld in LOADS]
    if a.cells:
        cells = [(float(c.split(":")[1]), c.split(":")[0]) for c in a.cells.split(",")]
    for rep in range(a.reps):
        rng.shuffle(cells)
        for slow, ld in cells:
            set_slow(root, slow)
            methods = list(METHODS)
            rng.shuffle(methods)
            busy = Busy() if ld == "busy" else None
            if busy:
                busy.__enter__()
            try:
                for m in methods:
                    before = load()
                    junit = work / "junit.xml"
                    if junit.exists():
                        junit.unlink()
                    report = work / "report.json"
                    if report.exists():
                        report.unlink()
                    extra = [f"--llmcycle-report={report}"] if m != "pytest-benchmark" else []
                    rc, wall, calls = pytest_run(root, method_args(m, a.threshold, a.budget) + extra, junit)
                    stages = stage_outcomes(report)
                    timed = timed_part(report)
                    results.append(dict(rep=rep, slow=slow, load=ld, method=m, rc=rc, wall=wall, calls=calls, loadavg=before,
                                        stages=stages, timed=timed))
                    print(f"rep {rep} {ld:5} +{slow:.0%} {m:16} rc={rc} wall={wall:.1f}s calls={calls:.1f}s "
                          f"timed={timed if timed is None else round(timed, 2)}s load {before}", flush=True)
            finally:
                if busy:
                    busy.__exit__()
        set_slow(root, 0.0)
        write(a, results, started)  # after every repetition: a stopped run keeps what it measured
    write(a, results, started)
    shutil.rmtree(work, ignore_errors=True)


def write(a, results: list[dict], started: str) -> None:
    out = Path(a.out)
    lines = [
        "# Base against head: verdict quality next to the committed-baseline mode and pytest-benchmark",
        "",
        f"`python bench/against.py --reps {a.reps} --threshold {a.threshold} --budget {a.budget}`, started {started};",
        f"{len({r['rep'] for r in results})} of {a.reps} repetitions done: that many fresh runs per cell and method, "
        "cells and methods interleaved in a shuffled order.",
        "Workloads: tiny Llama forward (32 tokens) and `generate` of 8 tokens (prompt 32), 1 thread;",
        "the head is slowed by a forward hook that busy-waits the given fraction of each forward.",
        "busy = a busy-loop process per core during the cell. A run fails when pytest exits 1.",
        "",
        "| load | head slowdown | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for ld in LOADS:
        for s in SLOWS:
            cells = []
            if not any(r["load"] == ld and r["slow"] == s for r in results):
                continue
            for m in METHODS:
                rs = [r for r in results if r["load"] == ld and r["slow"] == s and r["method"] == m]
                fails = sum(r["rc"] == 1 for r in rs)
                errs = sum(r["rc"] not in (0, 1) for r in rs)
                word = "false failures" if s == 0 else "caught"
                cells.append(f"{fails}/{len(rs)} {word}" + (f" ({errs} errors)" if errs else ""))
            lines.append(f"| {ld} | +{s:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "Time per run (median, seconds): `calls` = the tests' call phases from JUnit (with --llmcycle-against "
              "they include starting the base and head processes and their fixtures); `timed` = the stages' `section_s` "
              "from the JSON report (each stage's cold call, calibration, warm-up, rounds, re-measure and machine check; "
              "with --llmcycle-against every process's turns from the first until the base's records are in):", "",
              "| method | load | wall | calls | timed | timed / committed's |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        for ld in LOADS:
            rs = [r for r in results if r["method"] == m and r["load"] == ld]
            if rs:
                timed = [r["timed"] for r in rs if r.get("timed")]
                base = [r["timed"] for r in results if r["method"] == "committed" and r["load"] == ld and r.get("timed")]
                rel = f"{statistics.median(timed) / statistics.median(base):.2f}x" if timed and base else "-"
                lines.append(f"| {m} | {ld} | {statistics.median(r['wall'] for r in rs):.1f} "
                             f"({min(r['wall'] for r in rs):.1f}-{max(r['wall'] for r in rs):.1f}) | "
                             f"{statistics.median(r['calls'] for r in rs):.2f} | "
                             + (f"{statistics.median(timed):.2f} ({min(timed):.2f}-{max(timed):.2f}) | {rel} |" if timed else "- | - |"))
    aa = [r["stages"][st] for r in results if r["method"] == "against" and r["slow"] == 0 for st in r["stages"]]
    ratios = sorted(x[1] for x in aa if x[1])
    if ratios:
        lines += ["", f"--llmcycle-against on unchanged code (A/A, both loads, {len(ratios)} stage verdicts): ratio head/base "
                  f"median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}..{ratios[-1]:.3f}; per-pair ratios of each: "
                  + "; ".join(x[2] for x in aa if x[2])[:1500]]
    lines += ["", "Load averages (1/5/15 min) before each run: " + ", ".join(sorted({r['loadavg'] for r in results})[:6]) + " ...", "",
              "<details><summary>every run</summary>", "", "```json"]
    lines += [json.dumps(r) for r in results] + ["```", "", "</details>", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
