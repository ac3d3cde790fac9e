"""The reference workload is timed in batches as long as the stage it is compared with."""
from __future__ import annotations

import pytest

from pytest_llmcycle.measure import machine


class StepClock:
    """Advances 0.2 ms for every call of the workload; reading it costs nothing."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def fake_workload(monkeypatch):
    clock = StepClock()

    def work():
        clock.t += 200_000

    monkeypatch.setattr(machine, "_python_workload", work)
    monkeypatch.delitem(__import__("sys").modules, "torch", raising=False)
    return clock


def test_a_sub_millisecond_reference_is_timed_call_by_call_by_default(fake_workload):
    m = machine.measure_reference("cpu", clock=fake_workload)
    assert m.number == 1
    assert m.median_ns == pytest.approx(200_000)


@pytest.mark.parametrize("sample_s, number", [(0.01, 50), (0.002, 10), (1.0, 250)])
def test_the_reference_batch_spans_the_stage_sample_capped(fake_workload, sample_s, number):
    m = machine.measure_reference("cpu", clock=fake_workload, sample_s=sample_s)
    # per-call time stays comparable with a stored reference taken call by call
    assert m.median_ns == pytest.approx(200_000)
    assert m.number == number  # 0.2 ms * number = min(sample_s, MAX_SAMPLE_S)
    assert m.number * 0.2e-3 == pytest.approx(min(sample_s, machine.MAX_SAMPLE_S))
