"""timing.py and device.py: warm-up, adaptive rounds, batching, the cold call, pinned threads.

Driven by a fake clock that only moves when the timed function runs, so every count is exact.
"""
from __future__ import annotations

import pytest
import torch

from pytest_llmcycle.measure import device as devmod
from pytest_llmcycle.measure.timing import TimingPolicy, call_round, make_round, pinned_threads, run_rounds, time_callable

from fakeclock import MS, FakeClock  # noqa: E402


def jitter(i: int) -> float:
    """A deterministic +-3 % wobble: non-degenerate samples, never precise enough to stop early."""
    return 1 + 0.03 * ((i * 7) % 11 - 5) / 5


def test_min_rounds_are_taken_even_past_the_budget():
    clk = FakeClock(lambda i: 100 * MS)  # a 100 ms stage with a 50 ms budget
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=0.05, min_rounds=10, warmup_rounds=0), clk)
    assert len(m.samples_ns) == m.rounds == 10
    assert m.stopped_by == "budget"
    assert m.number == 1
    assert set(m.samples_ns) == {100 * MS}


def test_a_stable_stage_stops_early_once_its_median_is_precise():
    clk = FakeClock(lambda i: 2 * MS)
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=10.0, min_rounds=10, warmup_rounds=2), clk)
    assert m.stopped_by == "precision"
    assert m.rounds == 10
    # the warm-up still takes its tenth of the budget (1 s); the measuring stops after 10 rounds
    assert m.spent_s == pytest.approx(1.0 + 10 * 0.002, abs=0.003)


def test_a_noisy_stage_uses_its_whole_budget():
    clk = FakeClock(lambda i: 1 * MS * jitter(i))
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=0.2, min_rounds=10, warmup_rounds=2, precision=0.001), clk)
    assert m.stopped_by == "budget"
    # warm-up (10 % of the budget) + the budget itself, give or take a call
    assert 0.2 <= m.spent_s <= 0.2 * 1.1 + 0.005
    assert 180 <= m.rounds <= 201


def test_max_rounds_caps_a_fast_stage():
    clk = FakeClock(lambda i: 1 * MS * jitter(i))
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=100.0, min_rounds=10, max_rounds=25, precision=1e-9), clk)
    assert m.rounds == 25
    assert m.stopped_by == "max_rounds"


def test_the_cold_call_is_timed_on_its_own():
    clk = FakeClock(lambda i: 80 * MS if i == 0 else 1 * MS)
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=0.05, min_rounds=10), clk)
    assert m.cold_ns == 80 * MS
    assert max(m.samples_ns) == 1 * MS  # the cold call never reaches the samples


def test_tiny_calls_are_batched_and_reported_per_call():
    clk = FakeClock(lambda i: 10_000)  # 10 us: below the 100 us minimum sample
    m = time_callable(clk.work, "cpu", TimingPolicy(budget_s=0.05, min_rounds=10), clk)
    assert m.number == 10
    assert set(m.samples_ns) == {10_000}
    assert clk.calls >= 2 + m.rounds * 10


def test_warm_up_takes_the_configured_rounds_and_a_tenth_of_the_budget():
    clk = FakeClock(lambda i: 1 * MS)
    m = run_rounds(call_round(clk.work, devmod.synchronizer("cpu"), clk), TimingPolicy(budget_s=0.1, warmup_rounds=3), clk)
    # 10 ms of warm-up at 1 ms a call (one more if 0.1 * 0.1 s rounds up); none of it is a sample
    assert m.warmup_rounds in (10, 11)
    assert clk.calls == m.warmup_rounds + m.rounds


def test_run_rounds_can_return_several_samples_per_round():
    clk = FakeClock(lambda i: 1 * MS)

    def three_tokens():
        clk.work()
        return [1.0, 2.0, 3.0]

    m = run_rounds(three_tokens, TimingPolicy(budget_s=0.02, min_rounds=5, warmup_rounds=0, precision=1e-9), clk, unit="token")
    assert m.unit == "token"
    assert len(m.samples_ns) == 3 * m.rounds


def test_the_measurement_summary_is_computed_from_the_samples():
    clk = FakeClock(lambda i: [1, 2, 3][i % 3] * MS)
    m = run_rounds(call_round(clk.work, lambda: None, clk), TimingPolicy(budget_s=0.05, min_rounds=9, warmup_rounds=0, warmup_fraction=0), clk)
    assert m.median_ns == m.summary.median == 2 * MS


def test_cpu_rounds_use_the_given_clock():
    clk = FakeClock(lambda i: 5 * MS)
    assert make_round(clk.work, "cpu", clk, number=2)() == [5 * MS]
    assert clk.calls == 2


# ----------------------------------------------------------------------------- threads


def test_threads_are_pinned_inside_and_restored_after():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pinned_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with pinned_threads(1):
                raise RuntimeError("the timed code failed")
        assert torch.get_num_threads() == 2
        with pinned_threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- device


@pytest.mark.parametrize("spec, valid", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:3", True), ("mps", True), ("cuda:x", False), ("gpu", False), ("CPU", False)])
def test_device_specs(spec, valid):
    assert devmod.is_valid_device(spec) is valid


def test_auto_and_cpu_resolve_to_cpu_on_a_machine_without_accelerators():
    if torch.cuda.is_available() or devmod._mps_available():
        pytest.skip("this machine has an accelerator")
    assert devmod.resolve_device("auto") == "cpu"
    assert devmod.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"device 'cuda:0' requested but torch.cuda.is_available\(\) is False"):
        devmod.resolve_device("cuda:0")


def test_the_default_device_key_is_kind_and_model():
    key = devmod.default_device_key("cpu")
    assert key.startswith("cpu-") and key == key.lower() and " " not in key
    assert devmod.slug("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-xeon"
    assert devmod.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert devmod.slug("!!!") == "unknown"


def test_the_default_thread_count_is_half_the_cores():
    assert devmod.default_threads() >= 1


def test_dtype_of_a_module_and_of_its_bound_method():
    lin = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert devmod.dtype_of(lin) == "bfloat16"
    assert devmod.dtype_of(lin.forward) == "bfloat16"
    assert devmod.dtype_of(lambda: None) is None
    assert devmod.dtype_of(torch.nn.ReLU()) is None


def test_library_versions_only_report_what_is_imported():
    v = devmod.library_versions()
    assert v["torch"] == torch.__version__
