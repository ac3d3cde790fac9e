"""The LLM helpers on real tiny models (Llama and GPT-2 families, built from configs, CPU).

Assertions are on structure, counts, FLOPs and definitions, never on how fast something ran:
the planted regressions (KV cache off, eager attention, fp32 instead of bf16) are caught by the
deterministic counters.
"""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt2_config, tiny_llama_config
from pytest_llmcycle.llm import hf
from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.fixture import LLMCycle
from pytest_llmcycle.run.results import CYCLE
from pytest_llmcycle.llm.scaling import ScalingError
from pytest_llmcycle.run.session import RunState

N = 6  # new tokens per generation: few, so the whole file stays fast


def make(tmp_path, **kw) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.02, min_rounds=5, warmup_rounds=1, machine_check=False, **kw)
    return LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s)


def fresh_llama(**overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama" else tiny_gpt2


def test_generate_records_prefill_decode_and_end_to_end(tmp_path, model, input_ids):
    lc = make(tmp_path)
    g = lc.generate(model, input_ids, N)
    assert (g.prefill.stage, g.decode.stage, g.e2e.stage) == ("prefill", "decode", "e2e")
    assert g.decode.unit == "token"
    assert g.stats.n_tokens == N and g.stats.calls >= 5
    assert g.decode.n == g.stats.calls * (N - 1)
    assert g.prompt_length == input_ids.shape[1]
    assert all(c.n_tokens == N for c in g.calls)
    # the definitions hold on every call: TTFT + sum of gaps <= end-to-end
    for c in g.calls:
        assert 0 < c.ttft_ns and all(x > 0 for x in c.gaps_ns)
        assert c.ttft_ns + sum(c.gaps_ns) <= c.e2e_ns
    assert g.tokens_per_s == pytest.approx(N / (g.stats.e2e_ms / 1e3))
    assert str(g).startswith(f"{g.stats.calls} call(s) x {N} token(s)")


def test_generate_counters_split_exactly_at_the_first_token(tmp_path, model, input_ids):
    lc = make(tmp_path)
    g = lc.generate(model, input_ids, N)
    pre, dec, e2e = g.counters["prefill"], g.counters["decode"], g.counters["e2e"]
    assert set(pre) == set(dec) == set(e2e) == {"flops", "aten_ops", "alloc_bytes"}  # CPU: no allocator peak
    assert pre["flops"] > 0 and dec["flops"] > 0
    # end-to-end is prefill, N-1 decode steps and a tail (the last token's selection: no FLOPs)
    assert e2e["flops"] == pre["flops"] + (N - 1) * dec["flops"]
    assert e2e["aten_ops"] > pre["aten_ops"] + (N - 1) * dec["aten_ops"] - 1
    assert len(g.step_counters) == N - 1
    assert dec["flops"] == pytest.approx(sum(s["flops"] for s in g.step_counters) / (N - 1))
    # the counters are stored with the stages (and so in the baseline)
    assert g.decode.counters == {**dec, "counted_by": 2}  # stamped with the counting rules
    # and they are deterministic: a second run counts the same
    g2 = lc.generate(model, input_ids, N, name="again")
    assert g2.counters["again decode"] == dec and g2.counters["again prefill"] == pre


@pytest.mark.parametrize("mode", [dict(), dict(do_sample=True), dict(num_beams=2)], ids=["greedy", "sample", "beam"])
def test_the_step_marker_fires_once_per_generated_token(tiny_llama, input_ids, mode):
    kw = hf.generation_kwargs(tiny_llama, N, **mode)
    call, prompt, batch = hf.generate_call(tiny_llama, input_ids, kw)
    ticks = []
    out = call(lambda: ticks.append(1))
    assert len(ticks) == N
    assert out.shape[-1] == prompt + N  # pinned length: min_new_tokens == max_new_tokens
    assert batch == 1


def test_sampling_and_beam_search_become_their_own_stages(tmp_path, tiny_llama, input_ids):
    lc = make(tmp_path, counters=False)
    s = lc.generate(tiny_llama, input_ids, N, do_sample=True, name="sample")
    b = lc.generate(tiny_llama, input_ids, N, num_beams=2, name="beam")
    assert s.decode.stage == "sample decode" and b.decode.stage == "beam decode"
    lc.finish()
    cycle = [r for r in lc.results if r.kind == CYCLE][0]
    assert cycle.stage == f"T = sample prefill + {N - 1}*sample decode + beam prefill + {N - 1}*beam decode"


def test_generate_refuses_what_would_spoil_the_measurement(tmp_path, tiny_llama, input_ids):
    lc = make(tmp_path)
    with pytest.raises(TypeError, match="tokenize outside the timed region"):
        lc.generate(tiny_llama, "Once upon a time", N)
    with pytest.raises(ValueError, match="fresh KV cache"):
        lc.generate(tiny_llama, input_ids, N, past_key_values=object())
    with pytest.raises(ValueError, match="pins the output length"):
        lc.generate(tiny_llama, input_ids, N, min_new_tokens=1)


# ----------------------------------------------------------------------------- planted regressions


def test_kv_cache_off_costs_more_flops_per_decode_token_and_grows_with_position(tmp_path, tiny_llama, input_ids):
    lc = make(tmp_path)
    on = lc.generate(tiny_llama, input_ids, N, name="cache")
    off = lc.generate(tiny_llama, input_ids, N, name="nocache", use_cache=False)
    assert off.counters["nocache decode"]["flops"] > 5 * on.counters["cache decode"]["flops"]
    # with a cache a decode step's work is flat in position; without one it grows with it
    on.position_fit("flops").check(at_most=0.1)
    fit = off.position_fit("flops")
    assert fit.exponent > 0.5
    with pytest.raises(ScalingError, match="decode step flops"):
        fit.check(at_most=0.1)


def test_eager_attention_dispatches_more_ops_than_sdpa(tmp_path, input_ids):
    sdpa = fresh_llama()
    eager = fresh_llama()
    eager.set_attn_implementation("eager")
    lc = make(tmp_path)
    a = lc.generate(sdpa, input_ids, N, name="sdpa")
    b = lc.generate(eager, input_ids, N, name="eager")
    assert b.counters["eager decode"]["aten_ops"] > a.counters["sdpa decode"]["aten_ops"]
    assert b.counters["eager prefill"]["aten_ops"] > a.counters["sdpa prefill"]["aten_ops"]


def test_an_fp32_path_allocates_more_bytes_than_bf16(tmp_path, input_ids):
    m32 = fresh_llama()
    m16 = fresh_llama().to(torch.bfloat16)
    lc = make(tmp_path)
    with torch.no_grad():
        r = lc.ab(lambda: m32(input_ids), lambda: m16(input_ids), names=("fp32", "bf16"), counters=True, budget=0.05)
    assert r.counters_a["flops"] == r.counters_b["flops"]  # same math
    assert r.counters_a["alloc_bytes"] > r.counters_b["alloc_bytes"]  # twice the bytes per activation
    assert r.speedup > 0 and r.ci[0] <= r.speedup <= r.ci[1]
    assert len(r.samples_a_ms) == len(r.samples_b_ms) >= 5
    assert "fp32" in r.describe() and "alloc_bytes" in r.describe()


# ----------------------------------------------------------------------------- training step


def test_train_step_times_forward_backward_and_optimizer(tmp_path, input_ids):
    m = fresh_llama().train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    lc = make(tmp_path)
    r = lc.train_step(lambda: m(input_ids, labels=input_ids).loss, model=m, optimizer=opt)
    assert [x.stage for x in (r.forward, r.backward, r.optimizer)] == ["forward", "backward", "optimizer"]
    assert all(x.median_ms > 0 for x in (r.forward, r.backward, r.optimizer))
    # the phase boundaries are where they belong: a linear layer's backward is twice its forward
    # (SDPA's backward is 5 matmuls to its forward's 2, as it recomputes the scores: half the
    # forward's attention more; tiny_llama_config: 2 layers, 4 heads of 32; 32 tokens)
    attention = 2 * 2 * (2 * 1 * 4 * 32 * 32 * 32)
    assert r.counters["backward"]["flops"] == 2 * r.counters["forward"]["flops"] + attention // 2
    assert r.counters["optimizer"]["aten_ops"] > 0
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_train_step_without_optimizer(tmp_path, input_ids):
    m = fresh_llama().train()
    lc = make(tmp_path, counters=False)
    r = lc.train_step(lambda: m(input_ids, labels=input_ids).loss, model=m, name="lm")
    assert r.optimizer is None
    assert [x.stage for x in lc.results] == ["lm forward", "lm backward"]


# ----------------------------------------------------------------------------- any model: a hand-written loop


#: the KV cache's keyword: "cache" from transformers 5.2x, "past_key_values" before
CACHE_KW = "cache" if "cache" in __import__("inspect").signature(__import__("transformers").GPT2LMHeadModel.forward).parameters else "past_key_values"


def nano_loop(model, prompt, n, use_cache):
    """A nanoGPT-style greedy loop over any callable model: tick() after each token."""

    def loop(tick):
        idx, past = prompt, None
        with torch.no_grad():
            for _ in range(n):
                x = idx if past is None or not use_cache else idx[:, -1:]
                out = model(x, **{CACHE_KW: past}, use_cache=use_cache)
                past = getattr(out, CACHE_KW) if use_cache else None
                tick()  # this token's logits are ready
                idx = torch.cat([idx, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx

    return loop


def test_hand_written_loop_gets_the_same_per_token_metrics_and_counters(tmp_path, tiny_gpt2, input_ids):
    lc = make(tmp_path)
    on = lc.tokens(nano_loop(tiny_gpt2, input_ids, N, True), n_tokens=N, prompt_length=input_ids.shape[1], name="nano")
    off = lc.tokens(nano_loop(tiny_gpt2, input_ids, N, False), n_tokens=N, prompt_length=input_ids.shape[1], name="nano-nocache")
    assert on.decode.unit == "token" and on.decode.n == on.stats.calls * (N - 1)
    assert off.counters["nano-nocache decode"]["flops"] > 5 * on.counters["nano decode"]["flops"]
    assert on.counters["nano prefill"]["flops"] == off.counters["nano-nocache prefill"]["flops"]


class TinyGPT(torch.nn.Module):
    """nanoGPT's shape: ``model(idx)`` returns ``(logits, loss)``, logits for the last position only."""

    def __init__(self, vocab: int = 64, dim: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, idx, targets=None):
        x = self.emb(idx)
        if targets is None:
            return self.head(x[:, [-1], :]), None
        logits = self.head(x)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


class TinyGPTWithGenerate(TinyGPT):
    """nanoGPT's GPT also has a generate() of its own (not Hugging Face's)."""

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


def test_the_readme_tokens_example_on_a_model_that_returns_logits_and_loss(tmp_path):
    """The README's loop as it must read for nanoGPT, whose ``model(x)`` is a tuple ``(logits, loss)``
    (``model(x)[:, -1]`` indexes the tuple: a TypeError in the user's loop, not something a helper can mend)."""
    torch.manual_seed(0)
    model = TinyGPT().eval()
    idx = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    llmcycle = make(tmp_path)

    def loop(tick):  # called once per measured call
        x = idx
        with torch.no_grad():
            for _ in range(N):
                logits, _ = model(x)  # nanoGPT returns (logits, loss)
                tick()  # this token's logits are ready
                x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)

    g = llmcycle.tokens(loop, n_tokens=N, prompt_length=idx.shape[1])
    assert [r.stage for r in llmcycle.results] == ["prefill", "decode", "e2e"]
    assert g.stats.n_tokens == N and g.prompt_length == 8
    assert g.counters["prefill"]["flops"] > 0  # the model's matmuls, counted up to the first token


def test_compile_costs_stay_out_of_the_steady_state(tmp_path):
    lc = make(tmp_path, counters=False)
    step = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="eager")
    x = torch.randn(64)

    def loop(tick):
        for _ in range(3):
            step(x)
            tick()

    g = lc.tokens(loop)
    assert g.compile_calls == 1  # the cold call compiled; one more untimed call confirmed it was done
    assert g.compiles_while_timing == 0
    assert g.prefill.cold_ms is not None


# ----------------------------------------------------------------------------- scaling and plain callables


def test_prefill_scaling_over_prompt_lengths(tmp_path, tiny_llama):
    lc = make(tmp_path)

    def make_fn(n):
        ids = torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(n))  # built untimed
        return lambda: tiny_llama(ids)

    r = lc.scaling("prefill", make_fn, [16, 32, 64], inference_mode=True)
    assert r.sizes == (16.0, 32.0, 64.0) and len(r.samples_ms) == 3
    flops = r.assert_exponent(at_most=2.0, metric="flops")  # no worse than quadratic: deterministic
    assert 0.9 <= flops.exponent <= 2.0
    assert "16" in flops.table() and "64" in flops.table()
    t = r.fit()  # time: fitted and reported, not asserted here (it would flake on a shared runner)
    assert t.lo <= t.exponent <= t.hi


def test_counted_forward_with_inference_mode(tmp_path, tiny_llama, input_ids):
    lc = make(tmp_path)
    r = lc.counted("forward", lambda: tiny_llama(input_ids), inference_mode=True)
    assert r.counters["flops"] > 0 and r.counters["aten_ops"] > 0
    assert r.env["dtype"] == "float32"
    lc2 = make(tmp_path, counters=False)
    assert lc2.counted("forward", lambda: tiny_llama(input_ids), inference_mode=True).counters == {}


def test_recompiling_inside_the_measured_rounds_is_reported(tmp_path):
    from pytest_llmcycle.measure.steps import CompileWarning

    lc = make(tmp_path, counters=False)
    step = torch.compile(lambda x: torch.cos(x) + 1, backend="eager", dynamic=False)
    calls = []

    def loop(tick):
        calls.append(1)
        step(torch.randn(4 if len(calls) < 6 else 5))  # a new shape from the sixth call on: one recompile
        tick()

    with pytest.warns(CompileWarning, match="compiled 1 more time"):
        g = lc.tokens(loop)
    assert g.compile_calls == 1
    assert g.compiles_while_timing == 1
