"""The optimization checklist's speedups, measured: the table in docs/optimizations.md.

Runs the checklist itself, ``example_project/tests/test_optimizations.py``, with a larger budget
(``--llmcycle-budget``, so every A/B gets 2x that) and ``TINYGEN_COMPILE=1`` (the torch.compile
test), reads each A/B back from the JUnit XML (the tests record ``ab.<case>.*`` properties) and
writes:

* ``bench/results/optimizations.md``: the table, the machine, its load before and after;
* ``docs/optimizations.md``: the same table between its ``<!-- optimizations:begin/end -->``
  markers, so the published numbers are never typed in.

The numbers are the tests' own: what the checklist asserts is what the table shows. The run
fails (exit 1) when a test of the checklist fails; the table is written anyway, marked.

Run:  .venv/bin/python bench/optimizations.py [--budget 2.0] [--no-compile] [--no-docs]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
RESULTS = ROOT / "bench" / "results" / "optimizations.md"
DOCS = ROOT / "docs" / "optimizations.md"
BEGIN, END = "<!-- optimizations:begin (written by bench/optimizations.py) -->", "<!-- optimizations:end -->"


@dataclass(frozen=True)
class Case:
    """How one A/B of the checklist is shown: its row title, the cycle term, when it pays off."""

    title: str
    term: str  # forward, backward (the training step) or decode
    pays_off: str


#: in the order of the table; the keys are the ``case`` names the tests record
CASES = {
    "bf16_forward": Case(
        "bf16 autocast, forward", "forward",
        "With bf16 matmul units (AVX512-BF16/AMX, GPU tensor cores) and layers wide enough that the "
        "matmuls outweigh the casts. Activations take half the bytes on any machine."),
    "int8_dynamic_forward": Case(
        "int8 dynamic quantization (Linear)", "forward",
        "CPU inference of large Linear layers, above all memory-bound batch-1 decoding; weights "
        "are 4x smaller on any machine. Each call quantizes its activations, which small layers barely repay."),
    "magnitude_pruning": Case(
        "magnitude pruning 50 % (unstructured)", "forward",
        "Never in time with dense kernels: same FLOPs, same ops. Only structured pruning (smaller "
        "shapes) or sparse kernels (e.g. 2:4 semi-structured on recent GPUs) save time; zeros compress well."),
    "sdpa_vs_eager": Case(
        "SDPA vs eager attention, 256 tokens", "forward",
        "Always (transformers' default); the gain grows with the sequence length, and SDPA never "
        "writes the L x L attention matrix to memory."),
    "torch_compile": Case(
        "torch.compile, steady state", "forward",
        "Long-running serving or training: the compile (the cold call, here with an empty inductor "
        "cache) is paid once per process and shape; the break-even is cold / (eager - compiled) calls."),
    "bf16_train_step": Case(
        "bf16 autocast, training step", "backward",
        "Compute-bound steps on bf16 hardware; on small layers the casts of weights and gradients "
        "cost more than they save."),
    "gradient_accumulation": Case(
        "batch of 4 vs 4 x 1 accumulated (per optimizer step; per sample the same ratio)", "backward",
        "Accumulation never saves time: it gives a batch's gradient with one micro-batch's "
        "activation memory, at k times the kernel launches. Use it when the batch does not fit."),
    "kv_cache": Case(
        "KV cache on vs off, 16 tokens", "decode",
        "Always for autoregressive decoding; the gap grows with the number of generated tokens."),
    "sampling_vs_greedy_ttft": Case(
        "greedy vs sampling (top-k 50), TTFT", "decode",
        "The sampler adds a few ops per token, no model work: negligible on large models."),
    "sampling_vs_greedy_8_tokens": Case(
        "greedy vs sampling (top-k 50), 8 tokens", "decode",
        "As above: per generated token the same FLOPs."),
    "beam_vs_greedy_ttft": Case(
        "greedy vs beam search (4 beams), TTFT", "decode",
        "Beam search runs num_beams sequences from the prefill on: pay for it only where quality needs it."),
    "beam_vs_greedy_8_tokens": Case(
        "greedy vs beam search (4 beams), 8 tokens", "decode",
        "4x the FLOPs per token; the time less than 4x while the rows fit the machine's parallelism."),
}


@dataclass
class AB:
    case: str
    test: str
    outcome: str  # passed, failed, skipped
    props: dict = field(default_factory=dict)

    def num(self, key: str) -> float | None:
        v = self.props.get(key)
        try:
            return float(v) if v not in (None, "None") else None
        except ValueError:
            return None


def read_junit(path: Path) -> tuple[list[AB], list[tuple[str, str]]]:
    """The A/Bs the tests recorded (``ab.<case>.<key>`` properties), and every test's outcome."""
    abs_: dict[str, AB] = {}
    outcomes = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        name = tc.get("name", "")
        outcome = "failed" if tc.find("failure") is not None or tc.find("error") is not None else (
            "skipped" if tc.find("skipped") is not None else "passed")
        outcomes.append((name, outcome))
        for p in tc.iter("property"):
            parts = p.get("name", "").split(".")
            if len(parts) == 3 and parts[0] == "ab":
                ab = abs_.setdefault(parts[1], AB(parts[1], name, outcome))
                ab.props[parts[2]] = p.get("value")
    return list(abs_.values()), outcomes


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    if a == b:
        return "same"
    if not a or not b:
        return f"{b:.3g} vs {a:.3g}"  # a FLOP count the counter cannot see (int8 kernels)
    return f"{b / a:.2f}x"


def _ms(x: float | None) -> str:
    return "" if x is None else (f"{x:.3g} ms" if x < 1000 else f"{x / 1000:.3g} s")


def table(abs_: list[AB]) -> str:
    """The Markdown table: one row per A/B, in the order of :data:`CASES`."""
    by_case = {ab.case: ab for ab in abs_}
    lines = [
        "| term | optimization | A | B | median A | median B | speedup of B (95 % CI) | shown | FLOPs B/A | bytes B/A | when it pays off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in list(CASES) + sorted(set(by_case) - set(CASES)):
        ab = by_case.get(case)
        spec = CASES.get(case, Case(case, "", ""))
        if ab is None:
            lines.append(f"| {spec.term} | {spec.title} | | | | | not measured | | | | {spec.pays_off} |")
            continue
        s, lo, hi = ab.num("speedup"), ab.num("ci_lo"), ab.num("ci_hi")
        shown = "B faster" if lo is not None and lo > 1 else "B slower" if hi is not None and hi < 1 else "inconclusive"
        if ab.outcome == "failed":
            shown += " (test FAILED)"
        note = spec.pays_off
        if case == "torch_compile" and ab.num("cold_b_ms") is not None:
            saved = (ab.num("median_a_ms") or 0) - (ab.num("median_b_ms") or 0)
            even = f"break-even after {ab.num('cold_b_ms') / saved:,.0f} calls" if saved > 0 else "no break-even: nothing saved"
            note = f"Compile (cold call) {_ms(ab.num('cold_b_ms'))}, {even}. " + note
        lines.append(
            f"| {spec.term} | {spec.title} | {ab.props.get('a', '')} | {ab.props.get('b', '')} "
            f"| {_ms(ab.num('median_a_ms'))} | {_ms(ab.num('median_b_ms'))} "
            f"| **{s:.2f}x** ({lo:.2f}-{hi:.2f}) | {shown} "
            f"| {_ratio(ab.num('flops_a'), ab.num('flops_b'))} | {_ratio(ab.num('alloc_bytes_a'), ab.num('alloc_bytes_b'))} "
            f"| {note} |"
        )
    return "\n".join(lines)


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return (f"{cpu}, {cores} cores, torch threads pinned to {max(1, cores // 2)} by the plugin (half the cores), "
            f"no GPU used; Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def run_checklist(budget: float, compile_: bool, xml: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_STEP_SUMMARY"))}
    env["TINYGEN_COMPILE"] = "1" if compile_ else ""
    # an empty inductor cache: the compile row shows a first compile, not a cache hit
    env["TORCHINDUCTOR_CACHE_DIR"] = str(xml.parent / "inductor")
    cmd = [sys.executable, "-m", "pytest", "tests/test_optimizations.py", "-q", "-p", "no:cacheprovider",
           "--llmcycle-budget", str(budget), "--junitxml", str(xml)]
    return subprocess.run(cmd, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=3600)


def write_docs(block: str) -> bool:
    if not DOCS.exists():
        return False
    text = DOCS.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + BEGIN + "\n" + block + "\n" + END + tail, encoding="utf-8")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=2.0, help="stage budget in seconds; each A/B gets twice that")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile test (15-80 s of compiling)")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/optimizations.md")
    args = ap.parse_args()
    before = uptime()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmcycle-opt-") as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = run_checklist(args.budget, not args.no_compile, xml)
        if not xml.exists():
            print(proc.stdout[-4000:] + proc.stderr[-2000:], file=sys.stderr)
            return 2
        abs_, outcomes = read_junit(xml)
    wall = time.perf_counter() - t0
    after = uptime()
    tab = table(abs_)
    failed = [n for n, o in outcomes if o == "failed"]
    skipped = [n for n, o in outcomes if o == "skipped"]
    when = time.strftime("%Y-%m-%d", time.gmtime())
    # the options are said in words: tests/test_readme.py checks that every flag the docs name exists
    how = (f"`bench/optimizations.py` on {when}" + (", without the torch.compile test" if args.no_compile else "")
           + f": `example_project/tests/test_optimizations.py` with `--llmcycle-budget {args.budget:g}` "
           f"(each A/B {2 * args.budget:g} s, at least 10 alternating rounds), {wall:.0f} s in all.")
    block = "\n".join([
        f"Measured by {how}",
        f"Machine: {machine()}.",
        "",
        tab,
        "",
        "*speedup of B* = median(A) / median(B): above 1, B is faster. *shown*: `B faster` when the whole "
        "95 % bootstrap interval is above 1, `B slower` when it is below, else `inconclusive`. FLOPs and "
        "bytes are the deterministic counters of one call (`alloc_bytes`: bytes of the tensors it creates). "
        "On a CPU the FLOP counter does not see SDPA's fused attention nor int8 kernels (int8: 0 FLOPs), "
        "so those two rows compare what it can see.",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join([
        "# The optimization checklist, measured",
        "",
        block,
        "",
        f"Load before: `{before}`  ",
        f"Load after: `{after}`",
        "",
        f"Tests: {len(outcomes) - len(failed) - len(skipped)} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "") + f", {len(skipped)} skipped"
        + (f" ({', '.join(skipped)})" if skipped else "") + ".",
        "",
    ]), encoding="utf-8")
    print(block)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    if not args.no_docs:
        print("updated docs/optimizations.md" if write_docs(block) else f"docs/optimizations.md has no {BEGIN} markers: not updated")
    if failed:
        print(f"FAILED: {', '.join(failed)}\n{proc.stdout[-6000:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
