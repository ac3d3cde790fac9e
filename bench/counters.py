"""What the first counting call in a process costs (issue 12, must-have 5), against the named peer.

Each round starts a fresh Python, builds the hand-written GPT of tests/counters_gpt.py, runs one
uncounted generation (so both sides start warm on the model), then times the first counting
call and a second one: ``llmcycle`` (measure.counters.count_call) or ``torch`` (torch's
FlopCounterMode, what the plugin counted FLOPs with before). Rounds alternate between the two,
so a busy machine slows both alike. Prints medians and ranges with the machine's load, and with
--write appends them to bench/results/counters.md.

    .venv/bin/python bench/counters.py --rounds 5 [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, "tests")
from counters_gpt import TinyGPT
m = TinyGPT().eval(); ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    m.generate(ids, 4)
which = sys.argv[1]
if which == "llmcycle":
    from pytest_llmcycle.measure.counters import count_call
    def count():
        return count_call(lambda: m.generate(ids, 4))["flops"]
else:
    from torch.utils.flop_counter import FlopCounterMode
    def count():
        with FlopCounterMode(display=False) as f:
            m.generate(ids, 4)
        return f.get_total_flops()
out = []
for _ in range(2):
    t = time.perf_counter()
    with torch.inference_mode():
        flops = count()
    out.append(time.perf_counter() - t)
print(json.dumps({"first": out[0], "second": out[1], "flops": flops}))
"""


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res: dict[str, list[dict]] = {"llmcycle": [], "torch": []}
    loads = [load()]
    for i in range(a.rounds):
        for which in (("llmcycle", "torch") if i % 2 == 0 else ("torch", "llmcycle")):
            p = subprocess.run([sys.executable, "-c", CHILD, which], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            res[which].append(json.loads(p.stdout.strip().splitlines()[-1]))
        loads.append(load())
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {a.rounds} rounds each, interleaved; "
             f"1-min load {', '.join(loads)} (2 cores)", "",
             "| counter | first call, median (range) | second call, median (range) | FLOPs of the generation |", "|---|---|---|---|"]
    for which, rs in res.items():
        f = [r["first"] for r in rs]
        s = [r["second"] for r in rs]
        lines.append(f"| {which} | {statistics.median(f):.3f} s ({min(f):.3f} .. {max(f):.3f}) | "
                     f"{statistics.median(s):.3f} s ({min(s):.3f} .. {max(s):.3f}) | {rs[0]['flops']:,} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        out = ROOT / "bench" / "results" / "counters.md"
        if not out.exists():
            out.write_text("# First counting call: pytest-llmcycle's counters against torch's FlopCounterMode\n\n"
                           "Written by `bench/counters.py`; see its docstring for what is timed.\n\n")
        with out.open("a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
