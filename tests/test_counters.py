"""Counting (measure/counters.py, issue 12 must-have 1): each counter against an independent computation.

FLOPs against the matmul arithmetic written out by hand (SDPA must count what the hand-written
attention counts), bytes against the sizes of the tensors an op returns and against
torch.profiler's allocator record, ops against a hand count; all the same under
``inference_mode``, ``no_grad`` and autograd.
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pytest_llmcycle.measure.counters import Counting, count_call, delta  # noqa: E402

from counters_gpt import Plant, Shape, TinyGPT  # noqa: E402

GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "autograd": torch.enable_grad}


def manual_attention(q, k, v, causal):
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("tq,tk", [(16, 16), (1, 17), (5, 9)])  # prefill, a cached decode step, a chunk
def test_sdpa_counts_the_flops_of_the_same_attention_written_out(mode, tq, tk):
    b, h, d = 2, 4, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (tq, tk, tk))
    by_hand = 2 * (2 * b * h * tq * tk * d)  # q @ k.T and p @ v, a multiply-add each
    with GRAD_MODES[mode]():
        fused = count_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1))
        manual = count_call(lambda: manual_attention(q, k, v, tq > 1))
    assert fused["flops"] == manual["flops"] == by_hand


def test_sdpa_backward_is_counted_like_the_written_out_backward():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, requires_grad=True) for _ in range(3))
    fwd_bwd = {}
    for name, attn in (("fused", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
                       ("manual", lambda: manual_attention(q, k, v, True))):
        fwd_bwd[name] = count_call(lambda: attn().sum().backward())["flops"]
    # forward 2 matmuls, backward 4 (grad of each operand of each) + the recomputed scores: 7 x 2*1*2*6*6*4
    assert fwd_bwd["fused"] == 7 * 2 * 2 * 6 * 6 * 4
    # the written-out backward does not recompute the scores: one matmul less
    assert fwd_bwd["manual"] == 6 * 2 * 2 * 6 * 6 * 4


def tiny_gpt_flops(s: Shape, b: int, t: int) -> int:
    """One forward of TinyGPT over t new positions attending to t positions, by hand."""
    n, c = b * t, s.width
    per_layer = 4 * 2 * n * c * c + 2 * 2 * n * c * 4 * c + 2 * 2 * b * t * t * c
    return s.layers * per_layer + 2 * n * c * s.vocab


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_flops_of_a_small_gpt_prefill_match_the_arithmetic(mode):
    s, ids = Shape(), torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    m = TinyGPT(s).eval()
    with GRAD_MODES[mode]():
        assert count_call(lambda: m(ids))["flops"] == tiny_gpt_flops(s, 2, 16)


def test_attention_is_counted_in_each_cached_decode_step():
    """The step at position p attends to p keys: its FLOPs grow by the attention's share each step."""
    m, ids = TinyGPT().eval(), torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), Counting() as c:
        snaps = [c.snapshot()]
        m.generate(ids, 4, tick=lambda: snaps.append(c.snapshot()))
    steps = [delta(snaps[i], snaps[i + 1])["flops"] for i in range(1, 4)]
    s = m.shape
    attention_per_key = s.layers * 2 * 2 * s.width  # q . k and p * v for one more key, all heads
    assert [b - a for a, b in zip(steps, steps[1:])] == [attention_per_key] * 2


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_alloc_bytes_are_the_new_storages_once_and_views_are_free(mode):
    x = torch.randn(4, 6)
    with GRAD_MODES[mode]():
        cases = {
            "fp64 upcast": (lambda: x.double(), _nbytes(x) * 2, 1),
            "contiguous of a transpose": (lambda: x.t().contiguous(), _nbytes(x), 1),
            "reshape of a transpose (a copy, counted once)": (lambda: x.t().reshape(24), _nbytes(x), 1),
            "contiguous of a contiguous tensor": (lambda: x.contiguous(), 0, 0),
            "views and a reshape of a contiguous tensor": (lambda: x.unsqueeze(0).squeeze(0).reshape(24).view(4, 6), 0, 0),
            "in place: computes, allocates nothing": (lambda: x.mul_(1.0), 0, 1),
        }
        for what, (fn, nbytes, ops) in cases.items():
            got = count_call(fn)
            assert (got["alloc_bytes"], got["aten_ops"]) == (nbytes, ops), what


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_alloc_bytes_of_a_small_gpt_match_the_profilers_allocations(mode):
    """torch.profiler records each allocation of the CPU allocator; with the attention written
    out (no kernel-internal scratch buffers) the two must agree to the byte."""
    from torch.profiler import ProfilerActivity, profile

    m = TinyGPT(plant=Plant(manual_attention=True)).eval()
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    with GRAD_MODES[mode]():
        m(ids)
        counted = count_call(lambda: m(ids))["alloc_bytes"]
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
            m(ids)
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in p.events() if e.name != "[memory]")
    assert counted == allocated > 0


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_ops_flops_and_bytes_of_a_small_mlp_by_hand(mode):
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4), torch.nn.LayerNorm(4)).eval()
    x = torch.randn(3, 5, 8)
    n = 15  # rows
    with GRAD_MODES[mode]():
        got = count_call(lambda: m(x))
    # addmm, gelu, addmm, layer norm (output, mean, rstd); the reshapes around each linear are views
    assert got == {
        "flops": 2 * n * 8 * 16 + 2 * n * 16 * 4,
        "aten_ops": 4,
        "alloc_bytes": 4 * (n * 16 + n * 16 + n * 4 + n * 4 + n + n),
    }


def test_counts_do_not_depend_on_the_grad_mode_on_a_whole_generation():
    m, ids = TinyGPT().eval(), torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    seen = []
    for ctx in GRAD_MODES.values():
        with ctx():
            seen.append(count_call(lambda: m.generate(ids, 3)))
    assert seen[0] == seen[1] == seen[2] and seen[0]["flops"] > 0
