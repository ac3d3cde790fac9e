"""Zero cost when unused: what the plugin adds to a suite with no timing tests.

Runs a 200-test suite with no llmcycle tests N times with the plugin enabled and with
``-p no:llmcycle``, interleaved, and prints the median wall time of each, the import time of
``pytest_llmcycle.plugin`` and whether torch/numpy/transformers got imported.

Run:  .venv/bin/python bench/unused_cost.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmcycle-unused-"))
    (work / "test_plain.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('i', range(200))\ndef test_plain(i):\n    assert i >= 0\n"
    )
    (work / "pytest.ini").write_text("[pytest]\n")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:xdist"]
    times: dict[str, list[float]] = {"enabled": [], "disabled": []}
    for _ in range(args.runs):
        for mode, extra in (("enabled", []), ("disabled", ["-p", "no:llmcycle"])):
            t0 = time.perf_counter()
            r = subprocess.run(base + extra, cwd=work, capture_output=True, text=True)
            times[mode].append(time.perf_counter() - t0)
            assert r.returncode == 0, r.stdout + r.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import sys, pytest; import pytest_llmcycle.plugin; print(sorted(m for m in ('torch','numpy','transformers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    own = [l for l in probe.stderr.splitlines() if "pytest_llmcycle.plugin" in l]
    import_us = int(own[-1].split("|")[1]) if own else -1
    en, dis = statistics.median(times["enabled"]), statistics.median(times["disabled"])
    print(f"200 plain tests, {args.runs} runs each: plugin enabled {en * 1000:.0f} ms, disabled {dis * 1000:.0f} ms "
          f"(difference {(en - dis) * 1000:+.0f} ms, {(en / dis - 1) * 100:+.1f}%)")
    print(f"import pytest_llmcycle.plugin: {import_us / 1000:.1f} ms (after pytest itself); heavy modules imported: {probe.stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
