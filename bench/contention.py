"""A busy machine must not fail unchanged code: stages of several lengths under CPU contention.

Records baselines for three CPU stages (about 1, 4 and 13 ms, one thread) on a quiet machine,
then runs CHECKS fresh pytest processes of the unchanged code while one busy-looping process
per core competes for the CPU, with and without the machine-speed check. Prints each stage's
outcomes: a stage slowed only by the neighbours should be "ok", "inconclusive" (machine far off
its baseline speed) or normalised, never "regressed".

Run:  .venv/bin/python bench/contention.py [--checks 5]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TEST = '''
import torch
X = torch.randn(256, 256); W = torch.randn(256, 256)

def work(n):
    for _ in range(n):
        X @ W

def test_stages(llmcycle):
    llmcycle.measure("one_ms", lambda: work(3), cycle=False)
    llmcycle.measure("four_ms", lambda: work(12), cycle=False)
    llmcycle.measure("thirteen_ms", lambda: work(40), cycle=False)
'''


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmcycle-contention-"))
    (work / "test_c.py").write_text(TEST)
    (work / "pytest.ini").write_text("[pytest]\n")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "--llmcycle-threads", "1"]
    r = subprocess.run(cmd + ["--llmcycle-update"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    outcomes: dict = collections.defaultdict(collections.Counter)
    for _ in range(args.checks):
        for check in ("on", "off"):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
            try:
                r = subprocess.run(cmd + ["-o", f"llmcycle_machine_check={'true' if check == 'on' else 'false'}"],
                                   cwd=work, capture_output=True, text=True)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            for stage, change, verdict in re.findall(r"::test_stages\s+(\w+)\s+\S+ \S+\s+\S+ \S+\s+([+-][\d.]+%)\s+(\w[\w ]*?)\s*\*?\s*$", r.stdout, re.M):
                outcomes[(check, stage)][verdict] += 1
    print(f"{args.checks} checks of unchanged code, one busy process per core ({os.cpu_count()} cores):")
    for (check, stage), c in sorted(outcomes.items()):
        print(f"  machine check {check:3}  {stage:12} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
