"""The optimization checklist: one in-process A/B per optimization of the cycle
T = T_forward + T_backward + T_decode, on the tiny Llama, on any machine, with no stored baseline.

Copy the test for your optimization and swap in your model. Each test asserts only what the
evidence supports on a shared CPU runner:

* **counters** (FLOPs, aten ops, bytes; ``llmcycle.ab(..., counters=True)``) where the
  optimization changes the work: deterministic, so they are compared exactly or against a
  computed expectation, and never flake;
* **time** only where the speedup is large on any machine, with ``r.assert_faster(x)``: it fails
  only when the whole 95 % interval of the speedup is below ``x``;
* elsewhere the speedup depends on the machine (bf16 units, int8 kernels, the compiler) and
  is **reported, not asserted**: the interval is printed (``pytest -s``) and written to the
  JUnit XML as ``ab.<case>.*`` properties. A speedup whose interval holds 1 stays inconclusive
  instead of failing one run in twenty.

Every failure message carries both medians and the interval (``r.describe()``).
``bench/optimizations.py`` runs this file with a larger budget and renders the table in
``docs/optimizations.md`` from those JUnit properties.

The FLOP counter (``torch.utils.flop_counter``) counts matrix multiplications. On a CPU it has
no formula for SDPA's fused attention nor for int8 kernels: where that matters, a test says so.
"""
import copy
import os
import shutil
import warnings

import pytest
import torch

from tinygen import build_model, greedy_tokens
from tinygen.train import lm_loss

DECODE_TOKENS = 8  # generated per call where tokens are generated; a few keep the file fast


def report(record_property, case: str, r) -> str:
    """Show the A/B (``pytest -s``), record it in the JUnit XML, return it for failure messages."""
    lo, hi = r.ci
    shown = "faster" if lo > 1 else "slower" if hi < 1 else "no difference shown (the interval holds 1)"
    props = {
        "a": r.name_a, "b": r.name_b, "median_a_ms": r.median_a_ms, "median_b_ms": r.median_b_ms,
        "speedup": r.speedup, "ci_lo": lo, "ci_hi": hi, "cold_a_ms": r.cold_a_ms, "cold_b_ms": r.cold_b_ms,
    }
    for key, value in props.items():
        record_property(f"ab.{case}.{key}", round(value, 6) if isinstance(value, float) else value)
    for key in sorted(set(r.counters_a) & set(r.counters_b)):
        record_property(f"ab.{case}.{key}_a", r.counters_a[key])
        record_property(f"ab.{case}.{key}_b", r.counters_b[key])
    text = f"{case}: {r.name_b} vs {r.name_a}: {shown}\n{r.describe()}"
    print(text)
    return text


def forward(model, ids):
    return lambda: model(input_ids=ids)


# ---------------------------------------------------------------------------- T_forward


def test_bf16_autocast_forward(llmcycle, prompt_ids, record_property):
    """Mixed precision, forward: the same FLOPs, plus the casts; time depends on the machine."""
    dev = llmcycle.device
    model, ids = build_model(seed=0).to(dev), prompt_ids.to(dev)

    def bf16():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return model(input_ids=ids)

    r = llmcycle.ab(forward(model, ids), bf16, names=("fp32", "bf16 autocast"), counters=True, inference_mode=True)
    msg = report(record_property, "bf16_forward", r)
    # Autocast changes the precision of the matmuls, not their number.
    assert r.counters_b["flops"] == r.counters_a["flops"], msg
    # Autocast casts each matmul's weight and input to bf16 on every call: ops that allocate, on
    # any machine. (Allocated bytes are not asserted: the casts' bf16 copies of the weights can
    # outweigh the halved activations, as on this 128-wide model; counted right since issue 12.)
    assert r.counters_b["aten_ops"] > r.counters_a["aten_ops"], msg
    # Time is not asserted: bf16 pays off only with bf16 matmul units (AVX512-BF16, AMX, tensor
    # cores) *and* matmuls big enough to hide the casts. On this 128-wide model the casts cost
    # about what the narrower matmuls save or more (0.9-1.0x on an AVX512-BF16 EPYC), and on a
    # CPU without bf16 units it is slower still: any fixed threshold would fail on some runner.


def test_bf16_autocast_train_step(llmcycle, prompt_ids, record_property):
    """Mixed precision, training step (forward, backward, optimizer): same FLOPs, same loss."""
    dev = llmcycle.device
    model = build_model(seed=1).train().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = prompt_ids[:, :48].to(dev)

    def step(autocast: bool):
        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = lm_loss(model, batch)
            loss.backward()
            opt.step()
            return loss

        return run

    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        loss_bf16 = float(lm_loss(model, batch))
    with torch.no_grad():
        loss_fp32 = float(lm_loss(model, batch))
    r = llmcycle.ab(step(False), step(True), names=("fp32 step", "bf16 step"), counters=True)
    msg = report(record_property, "bf16_train_step", r)
    assert r.counters_b["flops"] == r.counters_a["flops"], msg  # forward + backward: the same matmuls
    assert abs(loss_bf16 - loss_fp32) <= 0.01 * abs(loss_fp32), f"bf16 loss {loss_bf16} vs fp32 {loss_fp32}"
    # Time is not asserted (see the forward): here the step reads 0.5-0.85x, *slower* in bf16, the
    # casts of weights and gradients outweighing 128-wide matmuls; with large layers on bf16
    # hardware the same test shows the gain. The interval is reported either way.


def test_int8_dynamic_quantization(llmcycle, model, prompt_ids, record_property):
    """Dynamic int8 quantization of the Linear layers: weights 4x smaller, logits close; time reported."""
    if llmcycle.device.type != "cpu":
        pytest.skip("dynamic int8 quantization (torch.ao.quantization.quantize_dynamic) runs on the CPU only")
    quantize_dynamic = getattr(getattr(torch, "ao", None) and torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        pytest.skip(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic (moved to torchao)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    # Every Linear was swapped for its int8 version (one left behind in fp32 is a silent no-op).
    assert not [n for n, m in q.named_modules() if type(m) is torch.nn.Linear]
    assert state_bytes(q) < 0.4 * state_bytes(model)  # int8 weights; embeddings stay fp32
    with torch.inference_mode():
        ref, got = model(input_ids=prompt_ids).logits, q(input_ids=prompt_ids).logits
    assert float((got - ref).norm() / ref.norm()) < 0.1  # 4 % here: int8 keeps the logits
    r = llmcycle.ab(forward(model, prompt_ids), forward(q, prompt_ids), names=("fp32", "int8 dynamic"),
                    counters=True, inference_mode=True)
    report(record_property, "int8_dynamic_forward", r)
    # Neither FLOPs nor time is asserted. The FLOP counter has no formula for the int8 kernels
    # (quantized::linear_dynamic), so it reads 0 FLOPs for them: a FLOPs "drop" that says
    # nothing. Time depends on the int8 kernels (fbgemm/oneDNN on x86, qnnpack on ARM) and on the
    # layer size: each call quantizes the activations, which 128-wide layers barely repay
    # (1.0-1.5x here, the interval mostly holding 1). It pays off for memory-bound decoding of
    # large models.


def state_bytes(module) -> int:
    import io

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def test_magnitude_pruning_keeps_the_work(llmcycle, model, prompt_ids, record_property):
    """Magnitude pruning zeroes half the weights; with dense kernels the work and the time stay."""
    import torch.nn.utils.prune as prune

    pruned = copy.deepcopy(model)
    for m in pruned.modules():
        if isinstance(m, torch.nn.Linear):
            prune.l1_unstructured(m, "weight", amount=0.5)
            prune.remove(m, "weight")  # make it permanent: plain dense weights with zeros in them
    linears = [m.weight for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    assert zeros >= 0.5
    r = llmcycle.ab(forward(model, prompt_ids), forward(pruned, prompt_ids), names=("dense", "pruned 50%"),
                    counters=True, inference_mode=True)
    msg = report(record_property, "magnitude_pruning", r)
    # The honest result: a dense matmul multiplies zeros like any other number. Same kernels on
    # the same shapes: the same FLOPs, ops and bytes, exactly.
    assert r.counters_b == r.counters_a, msg
    # ... and no speedup. This fails only if the pruned model is *surely* 1.25x faster: then your
    # kernels exploit sparsity (sparse or 2:4 semi-structured kernels), and the docs need a change.
    assert r.ci[0] < 1.25, msg
    # Pruning saves time only when the shapes shrink (structured pruning that removes rows or
    # heads) or with sparse kernels; unstructured zeros help compression, not speed.


def test_sdpa_vs_eager_attention(llmcycle, record_property):
    """SDPA never materializes the L x L attention matrix that eager attention does."""
    dev = llmcycle.device
    length = 256  # long enough for the attention matrix to matter
    ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(0)).to(dev)
    sdpa = build_model(seed=0, attn_implementation="sdpa").to(dev)
    eager = build_model(seed=0, attn_implementation="eager").to(dev)
    r = llmcycle.ab(forward(eager, ids), forward(sdpa, ids), names=("eager", "sdpa"),
                    counters=True, inference_mode=True)
    msg = report(record_property, "sdpa_vs_eager", r)
    cfg = sdpa.config
    # Eager attention allocates at least the attention probabilities, one fp32 L x L matrix per
    # head and layer, which SDPA's fused kernel never writes to memory. (Not FLOPs: both do the
    # same arithmetic, and the FLOP counter counts SDPA's attention like the written-out one.)
    attn_matrix_bytes = cfg.num_hidden_layers * cfg.num_attention_heads * length * length * 4
    assert r.counters_a["alloc_bytes"] - r.counters_b["alloc_bytes"] >= attn_matrix_bytes, msg
    assert r.counters_b["aten_ops"] < r.counters_a["aten_ops"], msg  # one fused op instead of matmul, softmax, matmul
    # Time: SDPA is 1.1x faster at 91 tokens and 1.1-1.35x at 256 on this CPU; the gain grows
    # with the length and depends on the kernel. What holds everywhere is that it is not slower:
    # strict=False fails only when the interval shows it slower, so a shared CI machine whose
    # neighbour widens the interval (1.12x, 95 % CI 0.88x..1.18x beside another xdist worker)
    # does not fail it; the strict form would need that proof from every run.
    r.assert_not_slower(0.10, strict=False)


# ---------------------------------------------------------------------------- T_backward


def test_gradient_accumulation(llmcycle, prompt_ids, record_property):
    """Accumulating 4 micro-batches of 1: the gradient and FLOPs of a batch of 4, for more time."""
    dev = llmcycle.device
    model = build_model(seed=1).train().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    k = 4
    batch = torch.cat([prompt_ids[:, i * 20:(i + 1) * 20] for i in range(k)]).to(dev)  # 4 samples of 20 tokens

    def one_batch():
        opt.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        opt.step()

    def accumulated():
        opt.zero_grad(set_to_none=True)
        for i in range(k):
            (lm_loss(model, batch[i:i + 1]) / k).backward()  # / k: the mean over the batch, as one batch has
        opt.step()

    # Correctness first: accumulation must give the batch's gradient (forgetting "/ k" is the classic bug).
    model.zero_grad(set_to_none=True)
    lm_loss(model, batch).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for i in range(k):
        (lm_loss(model, batch[i:i + 1]) / k).backward()
    assert all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6) for g, p in zip(whole, model.parameters()))

    r = llmcycle.ab(accumulated, one_batch, names=(f"{k} x 1 accumulated", f"batch of {k}"), counters=True)
    msg = report(record_property, "gradient_accumulation", r)
    msg += f"\n  per sample   {r.median_a_ms / k:.4g} ms vs {r.median_b_ms / k:.4g} ms ({k} samples per optimizer step)"
    # The same samples, the same matmuls: FLOPs per optimizer step are equal, exactly ...
    assert r.counters_a["flops"] == r.counters_b["flops"], msg
    # ... launched as k times as many ops: what accumulation costs on a small model.
    assert r.counters_a["aten_ops"] > 2 * r.counters_b["aten_ops"], msg
    # Time per optimizer step (and per sample: both steps see 4 samples): the batch of 4 is about
    # 2-3x faster here. Per-op overhead dominates at this size on any CPU or GPU, so a batch is never
    # surely slower than its accumulation. Accumulation buys memory (one sample's activations at a
    # time), not speed: use it when the batch does not fit.
    r.assert_faster(1.0)


# ---------------------------------------------------------------------------- T_decode


def test_kv_cache_on_vs_off(llmcycle, model, prompt_ids, record_property):
    """Without the KV cache every new token re-runs the whole sequence: FLOPs multiply, time follows."""
    ids = prompt_ids.to(llmcycle.device)
    n = 16
    r = llmcycle.ab(
        lambda: greedy_tokens(model, ids, n, use_cache=False),
        lambda: greedy_tokens(model, ids, n, use_cache=True),
        names=("no cache", "kv cache"), counters=True,
    )
    msg = report(record_property, "kv_cache", r)
    # Positions run through the model by greedy_tokens (a prefill, then one step after each of the
    # n tokens): p + n with the cache, p + sum(p + i) without. The FLOP counter counts the Linear
    # layers per position, so the FLOPs ratio is this ratio (on a GPU, with attention counted, more).
    p = ids.shape[1]
    expected = (p + sum(p + i for i in range(1, n + 1))) / (p + n)
    msg += f"\n  expected about {expected:.1f}x the FLOPs without the cache"
    assert r.counters_a["flops"] >= 0.9 * expected * r.counters_b["flops"], msg
    # 2.3-2.7x faster here at 16 tokens after a 91-token prompt; 1.5x holds with a wide margin on any
    # machine, and the gap grows with the number of tokens.
    r.assert_faster(1.5)


def generate_call(model, ids, n, **kw):
    return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)


def per_token(counters_n: dict, counters_1: dict, n: int) -> dict:
    """Counters of one decode step: (a call of n tokens - a call of 1 token) / (n - 1)."""
    return {k: (counters_n[k] - counters_1[k]) / (n - 1) for k in counters_n.keys() & counters_1.keys()}


def decoding_ab(llmcycle, record_property, model, ids, case, a_kw, b_kw, names):
    """TTFT (a call of one token) and a call of DECODE_TOKENS tokens, A vs B, with counters."""
    ids = ids.to(llmcycle.device)
    n = DECODE_TOKENS
    ttft = llmcycle.ab(generate_call(model, ids, 1, **a_kw), generate_call(model, ids, 1, **b_kw),
                       names=names, counters=True)
    e2e = llmcycle.ab(generate_call(model, ids, n, **a_kw), generate_call(model, ids, n, **b_kw),
                      names=names, counters=True)
    msg = report(record_property, f"{case}_ttft", ttft) + "\n" + report(record_property, f"{case}_{n}_tokens", e2e)
    step_a = per_token(e2e.counters_a, ttft.counters_a, n)
    step_b = per_token(e2e.counters_b, ttft.counters_b, n)
    time_a = (e2e.median_a_ms - ttft.median_a_ms) / (n - 1)
    time_b = (e2e.median_b_ms - ttft.median_b_ms) / (n - 1)
    for name, t, step in ((names[0], time_a, step_a), (names[1], time_b, step_b)):
        msg += f"\n  per generated token, {name}: {t:.3g} ms, {step['flops']:.4g} FLOPs, {step['aten_ops']:.4g} ops"
    return ttft, e2e, step_a, step_b, msg


def test_decoding_sampling_vs_greedy(llmcycle, model, prompt_ids, record_property):
    """Sampling runs the same model work per token as greedy; the sampler adds ops, not FLOPs."""
    ttft, e2e, sample, greedy, msg = decoding_ab(llmcycle, record_property, model, prompt_ids, "sampling_vs_greedy",
                                                 dict(do_sample=True, top_k=50), dict(do_sample=False),
                                                 ("sampling", "greedy"))
    assert sample["flops"] == greedy["flops"], msg  # the same forward per token
    assert sample["aten_ops"] > greedy["aten_ops"], msg  # softmax, top-k, multinomial: the sampler's own work
    # Time is reported only: the sampler's few ops are about 10 % of a token of this tiny model
    # and far less of a large one; the sign of so small a difference is machine-dependent.


def test_decoding_beam_search_vs_greedy(llmcycle, model, prompt_ids, record_property):
    """Beam search with 4 beams runs 4 sequences: 4x the FLOPs per token and in the prefill."""
    beams = 4
    ttft, e2e, beam, greedy, msg = decoding_ab(llmcycle, record_property, model, prompt_ids, "beam_vs_greedy",
                                               dict(num_beams=beams, do_sample=False), dict(do_sample=False),
                                               (f"beam {beams}", "greedy"))
    assert beam["flops"] == pytest.approx(beams * greedy["flops"], rel=0.01), msg
    assert ttft.counters_a["flops"] == pytest.approx(beams * ttft.counters_b["flops"], rel=0.01), msg
    # 4x the work per token and per prompt, plus the beams' bookkeeping: greedy is 1.6x faster
    # end to end here. On a machine with spare parallelism the 4 rows cost less than 4x, but
    # greedy is never surely slower: assert only that, for TTFT and for the whole call.
    ttft.assert_faster(1.0)
    e2e.assert_faster(1.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised by torch's own modules the compiler loads
def test_torch_compile(llmcycle, model, prompt_ids, record_property):
    """torch.compile: the compile is the cold call, paid once; the steady state is A/B'd against eager."""
    if not os.environ.get("TINYGEN_COMPILE"):
        pytest.skip("torch.compile (inductor) spends 15-80 s compiling this model on a 2-core CPU with a cold "
                    "cache: set TINYGEN_COMPILE=1 to run it (bench/optimizations.py does)")
    compilers = (os.environ.get("CXX", "g++"), "c++", "clang++")
    if llmcycle.device.type == "cpu" and not any(shutil.which(c) for c in compilers):
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on the CPU (none on PATH)")
    ids = prompt_ids.to(llmcycle.device)
    compiled = torch.compile(model)
    # The cold call of "compiled" is the compile: r.cold_b_ms, reported as its own cold number,
    # never mixed into the steady-state samples.
    r = llmcycle.ab(forward(model, ids), forward(compiled, ids), names=("eager", "compiled"), inference_mode=True)
    msg = report(record_property, "torch_compile", r)
    saved = r.median_a_ms - r.median_b_ms
    cost = f"  compile (cold call) {r.cold_b_ms / 1e3:.3g} s; " + (
        f"pays off after {r.cold_b_ms / saved:,.0f} calls" if saved > 0 else "the steady state saves nothing here")
    print(cost)
    msg += "\n" + cost
    assert r.cold_b_ms > 10 * r.median_b_ms, msg  # the compile is in the cold call, not in the samples
    # The steady state runs the compiled graph: one more call must not recompile. Its guards
    # include the torch thread count, so call it with the threads it was timed with (serve
    # with the thread count you compiled under: another one recompiles).
    threads = torch.get_num_threads()
    torch.set_num_threads(llmcycle.threads)
    try:
        with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
            compiled(input_ids=ids)
    finally:
        torch.set_num_threads(threads)
    # The steady-state speedup is reported, not asserted: 1.4x here, but it depends on the
    # compiler, the CPU and the model's size (fused kernels against the guards' cost).
