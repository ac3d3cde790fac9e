"""GPU check: the plugin's CUDA timings agree with raw CUDA events, and per-token marks cost little.

On a CUDA machine, in under three minutes:

1. **Agreement.** Known workloads (bf16 matmul chains of about 1 ms and 10 ms) are timed
   through the plugin (:func:`pytest_llmcycle.measure.timing.time_callable`: cold call, warm-up,
   adaptive rounds, CUDA events) and by a plain loop of CUDA events around single calls,
   interleaved; the medians must agree within ``--tolerance`` (default 3 %).
2. **Per-token marks.** A decode loop (a Hugging Face ``generate`` on a small Llama built from a
   config when transformers is installed, and a hand-written loop in any case) is timed end to
   end with raw CUDA events with and without the plugin's per-token marks
   (:class:`pytest_llmcycle.measure.steps.Ticker` / the ``generate`` step marker); the marks may add at
   most ``--overhead`` (default 3 %). The split must add up: TTFT + sum of gaps <= end-to-end,
   and the plugin's end-to-end median must agree with the raw one.

Prints every number and exits 1 on a disagreement. Without CUDA it says so and exits 0.

Run:  python bench/gpu_check.py [--tolerance 0.03] [--overhead 0.03]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: --cpu: run every step on the CPU with tiny sizes, to check the script itself (numbers not judged)
DRY_RUN = False
#: sizes and budgets: (matmul workloads, hand loop width/layers/vocab, Llama hidden/layers/vocab, budget s)
GPU = dict(matmuls=(("~1 ms", 4096, 4), ("~10 ms", 8192, 5)), loop=(4096, 16, 32000), llama=(1024, 8, 32000), prompt=128,
           dtype="bfloat16", budget=1.0, reps=50)
CPU = dict(matmuls=(("small", 64, 2), ("larger", 128, 2)), loop=(64, 2, 256), llama=(64, 1, 256), prompt=8,
           dtype="float32", budget=0.01, reps=3)
PROFILE = GPU


def raw_event_median(fn: Callable[[], Any], reps: int) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events, one call per pair.

    (In a ``--cpu`` dry run, between two ``perf_counter`` reads.)
    """
    import torch

    out = []
    if not DRY_RUN:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        if DRY_RUN:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
            continue
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return statistics.median(out)


def plugin_median(fn: Callable[[], Any], device: str, budget_s: float) -> float:
    from pytest_llmcycle.measure.timing import TimingPolicy, time_callable

    m = time_callable(fn, device, TimingPolicy(budget_s=budget_s, min_rounds=5 if DRY_RUN else 20), time.perf_counter_ns)
    return statistics.median(m.samples_ns) / 1e6


def interleaved(pairs: list[tuple[str, Callable[[], float]]], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` alternating runs of each estimator (GPU clocks drift over minutes)."""
    got: dict[str, list[float]] = {name: [] for name, _ in pairs}
    for i in range(repeats):
        for name, f in pairs if i % 2 == 0 else list(reversed(pairs)):
            got[name].append(f())
    return {k: statistics.median(v) for k, v in got.items()}


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


def check_agreement(device: str, tol: float) -> list[str]:
    import torch

    failures = []
    g = torch.Generator(device=device).manual_seed(0)
    for label, n, chain in PROFILE["matmuls"]:
        x = torch.randn(n, n, device=device, dtype=getattr(torch, PROFILE["dtype"]), generator=g)
        w = torch.randn(n, n, device=device, dtype=getattr(torch, PROFILE["dtype"]), generator=g) / n**0.5

        def fn(x=x, w=w, chain=chain):
            y = x
            for _ in range(chain):
                y = y @ w
            return y

        res = interleaved(
            [("plugin", lambda: plugin_median(fn, device, PROFILE["budget"])), ("raw events", lambda: raw_event_median(fn, PROFILE["reps"]))], 3
        )
        d = rel(res["plugin"], res["raw events"])
        ok = d <= tol
        print(f"  matmul chain {label:>7} ({n}x{n}, {chain} matmuls): plugin {res['plugin']:.4f} ms, raw events "
              f"{res['raw events']:.4f} ms, differ {d * 100:.2f}% {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"matmul {label}: plugin and raw CUDA events differ by {d * 100:.2f}% (> {tol * 100:.1f}%)")
    return failures


def check_marks(
    name: str,
    call: Callable[[Callable[[], None]], Any],
    plain: Callable[[], Any],
    device: str,
    n: int,
    tol_overhead: float,
    tol: float,
) -> list[str]:
    """End to end with raw events: ``plain()`` vs ``call(tick)`` with the plugin's ticker; the split must add up."""
    from pytest_llmcycle.llm.decode import token_call, token_stats
    from pytest_llmcycle.measure.steps import Ticker, time_marked
    from pytest_llmcycle.measure.timing import TimingPolicy

    failures = []
    ticker = Ticker(device)

    def marked() -> Any:
        ticker.start()
        out = call(ticker.tick)
        ticker.stop()
        return out

    for _ in range(3):
        plain()
        marked()
    reps = PROFILE["reps"] if DRY_RUN else 15
    res = interleaved([("no marks", lambda: raw_event_median(plain, reps)), ("marks", lambda: raw_event_median(marked, reps))], 4)
    overhead = res["marks"] / res["no marks"] - 1
    ok = overhead <= tol_overhead
    print(f"  {name}: end-to-end without marks {res['no marks']:.3f} ms, with a mark per token "
          f"{res['marks']:.3f} ms, overhead {overhead * 100:+.2f}% {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"{name}: per-token marks add {overhead * 100:.2f}% (> {tol_overhead * 100:.1f}%)")

    run = time_marked(call, device, TimingPolicy(budget_s=2 * PROFILE["budget"], min_rounds=5 if DRY_RUN else 15), time.perf_counter_ns, expected=n)
    calls = [token_call(m) for m in run.calls]
    s = token_stats(calls)
    print(f"  {name}: plugin {s.table()}")
    bad = [c for c in calls if not (0 < c.ttft_ns and c.ttft_ns + sum(c.gaps_ns) <= c.e2e_ns * (1 + 1e-6))]
    if bad:
        failures.append(f"{name}: {len(bad)} call(s) whose TTFT + gaps exceed end-to-end")
    d = rel(s.e2e_ms, res["no marks"])
    ok = d <= max(tol, tol_overhead) + tol
    print(f"  {name}: plugin end-to-end {s.e2e_ms:.3f} ms vs raw {res['no marks']:.3f} ms, differ {d * 100:.2f}% {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"{name}: plugin end-to-end differs from raw events by {d * 100:.2f}%")
    return failures


def hand_loop(device: str, n: int) -> tuple[Callable[[Callable[[], None]], Any], Callable[[], Any]]:
    """A nanoGPT-shaped greedy loop over a stack of linear layers (any model, no transformers)."""
    import torch

    torch.manual_seed(0)
    d, n_layers, vocab = PROFILE["loop"]
    layers = torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(n_layers)]).to(device, getattr(torch, PROFILE["dtype"]))
    head = torch.nn.Linear(d, vocab).to(device, getattr(torch, PROFILE["dtype"]))
    emb = torch.nn.Embedding(vocab, d).to(device, getattr(torch, PROFILE["dtype"]))
    tok = torch.zeros(8, dtype=torch.long, device=device)

    @torch.inference_mode()
    def loop(tick: Callable[[], None]) -> Any:
        t = tok
        for _ in range(n):
            logits = head(layers(emb(t)))
            tick()
            t = logits.argmax(-1)
        return t

    return loop, lambda: loop(lambda: None)


def hf_generate(device: str, n: int) -> tuple[Callable[[Callable[[], None]], Any], Callable[[], Any]] | None:
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    from pytest_llmcycle.llm import hf

    torch.manual_seed(0)
    hidden, n_layers, vocab = PROFILE["llama"]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=n_layers,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).to(device, getattr(torch, PROFILE["dtype"])).eval()
    ids = torch.randint(0, vocab, (1, PROFILE["prompt"]), device=device, generator=torch.Generator(device=device).manual_seed(0))
    kw = hf.generation_kwargs(model, n)
    call, _, _ = hf.generate_call(model, ids, kw)
    mask = torch.ones_like(ids)
    return call, lambda: model.generate(input_ids=ids, attention_mask=mask, **kw)  # no step marker at all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerance", type=float, default=0.03, help="plugin vs raw events, relative (default 0.03)")
    ap.add_argument("--overhead", type=float, default=0.03, help="largest cost of per-token marks, relative (default 0.03)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU with tiny sizes: checks the script, judges nothing")
    args = ap.parse_args(argv)
    global DRY_RUN, PROFILE
    DRY_RUN, PROFILE = args.cpu, (CPU if args.cpu else GPU)
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed: nothing to check (skipped)")
        return 0
    t0 = time.perf_counter()
    if args.cpu:
        device = "cpu"
        torch.set_num_threads(1)  # tiny ops on a shared CPU: more threads only add barrier waits
        print("gpu_check --cpu: dry run with tiny sizes; numbers are printed, not judged")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine: nothing to check (skipped)")
        return 0
    else:
        device = f"cuda:{torch.cuda.current_device()}"
        print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        # let the GPU reach its steady clocks before comparing anything
        x = torch.randn(8192, 8192, device=device, dtype=getattr(torch, PROFILE["dtype"]))
        while time.perf_counter() - t0 < 2.0:
            x @ x
        torch.cuda.synchronize()

    failures: list[str] = []
    print("1. plugin vs raw CUDA events")
    failures += check_agreement(device, args.tolerance)
    print("2. per-token marks")
    failures += check_marks("hand-written loop", *hand_loop(device, args.tokens), device, args.tokens, args.overhead, args.tolerance)
    gen = hf_generate(device, args.tokens)
    if gen is None:
        print("  transformers not installed: generate check skipped")
    else:
        hidden, n_layers, _ = PROFILE["llama"]
        failures += check_marks(f"HF generate (Llama {n_layers}x{hidden})", *gen, device, args.tokens, args.overhead, args.tolerance)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    if DRY_RUN:
        print(f"dry run: {len(failures)} check(s) would have failed on these CPU numbers (not judged)")
        return 0
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
