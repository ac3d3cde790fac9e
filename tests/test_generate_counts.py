"""``llmcycle.generate`` counts what it generated (issue 14, item 6), and its step marker is cheap (item 2).

Real tiny Llama (built from a config, CPU) for what generate returns; pure arithmetic for the
throughput; no assertion on how fast anything ran.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from pytest_llmcycle.config import Settings
from pytest_llmcycle.llm import hf
from pytest_llmcycle.llm.decode import token_call, token_stats
from pytest_llmcycle.measure.steps import Marks
from pytest_llmcycle.run.fixture import LLMCycle
from pytest_llmcycle.run.session import RunState

N = 4
MS = 1_000_000


def make(tmp_path) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.02, min_rounds=3, warmup_rounds=1, machine_check=False, counters=False)
    return LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s)


def prompt(batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (batch, 8), generator=torch.Generator().manual_seed(0))


def test_throughput_counts_every_returned_sequence():
    calls = [token_call(Marks((2 * MS, 3 * MS, 4 * MS), 5 * MS))]
    one = token_stats(calls, batch=2)
    assert (one.batch, one.return_sequences, one.beams, one.sequences) == (2, 1, 1, 2)
    assert one.tokens_per_s == pytest.approx(2 * 3 / 0.005)
    assert "batch 2:" in one.table()
    many = token_stats(calls, batch=2, return_sequences=3, beams=4)
    assert many.sequences == 6
    assert many.tokens_per_s == pytest.approx(2 * 3 * 3 / 0.005)  # B * R * N / e2e
    assert "batch 2 x 3 return sequences, 4 beams:" in many.table()
    # the times themselves do not depend on how many sequences there are
    assert (many.ttft_ms, many.tpot_ms, many.e2e_ms) == (one.ttft_ms, one.tpot_ms, one.e2e_ms)


def test_sampling_two_return_sequences_reports_both(tmp_path, tiny_llama):
    g = make(tmp_path).generate(tiny_llama, prompt(), N, do_sample=True, num_return_sequences=2)
    assert (g.batch, g.return_sequences, g.beams) == (1, 2, 1)
    assert g.tokens_per_s == pytest.approx(2 * N / (g.stats.e2e_ms / 1e3))
    assert "batch 1 x 2 return sequences:" in str(g)


def test_beam_search_reports_its_beams_and_the_sequences_it_returns(tmp_path, tiny_llama):
    lc = make(tmp_path)
    g = lc.generate(tiny_llama, prompt(2), N, num_beams=3, num_return_sequences=2, name="beams")
    assert (g.batch, g.return_sequences, g.beams) == (2, 2, 3)
    assert g.tokens_per_s == pytest.approx(2 * 2 * N / (g.stats.e2e_ms / 1e3))
    assert "batch 2 x 2 return sequences, 3 beams:" in str(g)
    b = lc.generate(tiny_llama, prompt(), N, num_beams=2, name="one")
    assert (b.batch, b.return_sequences, b.beams) == (1, 1, 2)
    assert b.tokens_per_s == pytest.approx(N / (b.stats.e2e_ms / 1e3))


def test_counts_come_from_what_generate_returned(tiny_llama):
    # a GenerateOutput (return_dict_in_generate=True) is read as well as a tensor
    kw = hf.generation_kwargs(tiny_llama, N, do_sample=True, extra=dict(num_return_sequences=3, return_dict_in_generate=True))
    call, _, batch = hf.generate_call(tiny_llama, prompt(2), kw)
    call(lambda: None)
    assert call.returned_rows == 6 and call.counts() == (2, 3, 1)

    class Model:
        """generate returns more rows than asked for (a generation config we did not read)."""

        generation_config = None

        def generate(self, input_ids, **kw):
            return torch.zeros(input_ids.shape[0] * 5, input_ids.shape[1] + N, dtype=torch.long)

    odd = hf.GenerateCall(Model(), prompt(), {"num_beams": 1})
    assert odd.counts() == (1, 1, 1)  # asked for
    odd(lambda: None)
    assert odd.counts() == (1, 5, 1)  # as it was


def test_the_model_generation_config_counts_when_no_argument_says(tiny_llama):
    from copy import deepcopy

    model = deepcopy(tiny_llama)
    model.generation_config.do_sample = True
    model.generation_config.num_return_sequences = 2
    kw = hf.generation_kwargs(model, N, do_sample=True)
    call, _, _ = hf.generate_call(model, prompt(), kw)
    assert call.counts() == (1, 2, 1)
    call(lambda: None)
    assert call.counts() == (1, 2, 1)


def test_the_step_marker_hands_generate_a_ready_signature(tiny_llama):
    """Hugging Face reads inspect.signature(processor.__call__) of every processor at every step;
    the marker's is built once, and calling the marker is unchanged."""
    marker = hf.StepMarker()
    assert inspect.signature(marker.__call__) is hf._STEP_SIGNATURE
    assert list(hf._STEP_SIGNATURE.parameters) == ["input_ids", "scores"]  # HF passes no kwargs
    ticks = []
    marker.tick = lambda: ticks.append(1)
    scores = torch.zeros(1, 8)
    assert marker(None, scores) is scores and marker.__call__(None, scores) is scores
    assert len(ticks) == 2
    # through Hugging Face's list, one tick per generated token
    kw = hf.generation_kwargs(tiny_llama, N)
    call, _, _ = hf.generate_call(tiny_llama, prompt(), kw)
    seen = []
    call(lambda: seen.append(1))
    assert len(seen) == N
