"""Does the machine factor read 1.00 when nothing changed? Record and check back to back.

The machine factor (now over then, of the reference workload) is what lets a verdict tell a
slower machine from slower code. It must read 1.00 +- 0.10 when the machine is in the same
state at record and check time, and follow the stages when the machine got slower between the
two. This script records and checks on one machine, back to back, in three pairs of states:

  quiet -> quiet   record quiet, check quiet           (the factor should read ~1.00)
  busy  -> busy    record and check with one `while True: pass` process per core
                                                       (the factor should read ~1.00)
  quiet -> busy    record quiet, check busy            (the factor should read what the stages read)

Each "session" times two unchanged CPU stages (a tiny Llama forward, ~2 ms, and a matmul loop,
~12 ms, one thread) as the plugin does, and the reference workload in each of the ways compared:

  old        record: reference in ~0.3 ms samples (`measure_reference(sample_s=0)`, what
             `--llmcycle-update` stored); check: in batches as long as the stage's samples
  same       record and check: in batches as long as the stage's samples (the sample length
             rounded to `machine.sample_bucket`, stored with each stage's entry)
  interleaved  record and check: reference batches alternating with the stage's own rounds,
             as long as the stage's samples (both see the same moment's load)
  runmedian  no reference: the median of the ratios of all stages of the run (here: the two)

Per pair and strategy it prints the factor and the residual (stage ratio / factor, what a
normalised verdict then sees): both should be 1.00 +- 0.10 where the factor is meant to be 1.
Pairs run interleaved, REPEATS times, so a drift of the host hits them alike; `uptime` load is
printed before and after.

Run:  .venv/bin/python bench/machine_factor.py [--repeats 3] [--out bench/results/machine_factor.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pytest_llmcycle.measure import machine  # noqa: E402
from pytest_llmcycle.measure.timing import TimingPolicy, pinned_threads, time_callable  # noqa: E402

STAGE_POLICY = TimingPolicy(budget_s=0.6, min_rounds=15)
STRATEGIES = ("old", "same", "interleaved", "runmedian")
INTERLEAVED_ROUNDS = 30
PAIRS = (("quiet", "quiet"), ("busy", "busy"), ("quiet", "busy"))


def make_stages() -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def llama() -> None:
        with torch.no_grad():
            model(ids)

    def matmul() -> None:
        for _ in range(40):
            a @ b

    return {"llama_2ms": llama, "matmul_12ms": matmul}


@contextmanager
def state(name: str):
    hogs = []
    if name == "busy":
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        time.sleep(0.3)
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def median_ms(m) -> float:
    return statistics.median(m.samples_ns) / 1e6


def interleaved(fn, ref, number: int, rounds: int = INTERLEAVED_ROUNDS) -> tuple[float, float]:
    """Medians (ms per call) of the stage and the reference, timed in alternating rounds."""
    xs, ys = [], []
    fn()
    for _ in range(number):
        ref()
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        for _ in range(number):
            ref()
        t2 = time.perf_counter_ns()
        xs.append((t1 - t0) / 1e6)
        ys.append((t2 - t1) / 1e6 / number)
    return statistics.median(xs), statistics.median(ys)


def session(stages: dict, recording: bool) -> dict:
    """One run's numbers: each stage's median and sample length, and the reference as each strategy takes it."""
    out: dict = {"stage": {}, "ref_same": {}, "ref_old": {}, "il_stage": {}, "il_ref": {}}
    ref = machine._torch_workload("cpu")
    with pinned_threads(1):
        for name, fn in stages.items():
            one = machine.measure_reference("cpu").median_ns / 1e9
            sample = time_callable(fn, "cpu", replace(STAGE_POLICY, budget_s=0.05, min_rounds=3)).median_ns / 1e9
            out["il_stage"][name], out["il_ref"][name] = interleaved(fn, ref, max(1, round(sample / one)))
            m = time_callable(fn, "cpu", STAGE_POLICY)
            sample_s = m.median_ns * max(1, m.number) / 1e9
            out["stage"][name] = median_ms(m)
            # the same sampling as the check: batches as long as the stage's samples, right after it
            out["ref_same"][name] = median_ms(machine.measure_reference("cpu", sample_s=machine.sample_bucket(sample_s)))
            # the old way: ~0.3 ms samples at record time, the stage's batch length at check time
            out["ref_old"][name] = median_ms(machine.measure_reference("cpu", sample_s=0.0 if recording else sample_s))
    return out


def factors(rec: dict, chk: dict) -> dict:
    """strategy -> stage -> (factor, stage ratio)."""
    ratios = {s: chk["stage"][s] / rec["stage"][s] for s in rec["stage"]}
    run_median = statistics.median(ratios.values())
    res: dict = {k: {} for k in STRATEGIES}
    for s, r in ratios.items():
        res["old"][s] = (chk["ref_old"][s] / rec["ref_old"][s], r)
        res["same"][s] = (chk["ref_same"][s] / rec["ref_same"][s], r)
        res["runmedian"][s] = (run_median, r)
        il_ratio = chk["il_stage"][s] / rec["il_stage"][s]
        res["interleaved"][s] = (chk["il_ref"][s] / rec["il_ref"][s], il_ratio)
    return res


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f} .. {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="record/check pairs per pair of states")
    ap.add_argument("--out", help="also append the results as Markdown to this file")
    args = ap.parse_args()
    stages = make_stages()
    t0 = time.time()
    before = load()
    # (pair, strategy, stage) -> factors, residuals
    got: dict = {}
    for i in range(args.repeats):
        for rec_state, chk_state in PAIRS:
            with state(rec_state):
                rec = session(stages, recording=True)
            with state(chk_state):
                chk = session(stages, recording=False)
            for strat, per_stage in factors(rec, chk).items():
                for s, (f, r) in per_stage.items():
                    fs, rs = got.setdefault((f"{rec_state} -> {chk_state}", strat, s), ([], []))
                    fs.append(f)
                    rs.append(r / f)
        print(f"repeat {i + 1}/{args.repeats} done ({time.time() - t0:.0f} s)", flush=True)
    after = load()
    lines = [
        f"Machine factor back to back, {args.repeats} record/check pairs per pair of states, "
        f"{time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} cores, torch {torch.__version__}); total {time.time() - t0:.0f} s.",
        f"Load before: `{before}`; after: `{after}`.",
        "",
        "median (range) over the pairs; residual = the stage's ratio over the factor (what a normalised verdict sees)",
        "",
        "| states | strategy | stage | factor | stage ratio | residual |",
        "|---|---|---|---|---|---|",
    ]
    for (pair, strat, s), (fs, rs) in got.items():
        ratios = [f * r for f, r in zip(fs, rs)]
        lines.append(f"| {pair} | {strat} | {s} | {fmt(fs)} | {fmt(ratios)} | {fmt(rs)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        p = Path(args.out)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
