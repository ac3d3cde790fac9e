"""User stories for the LLM helpers: a project records its baselines, then a planted regression fails.

The project's tests run a real tiny Llama through ``llmcycle.generate`` and ``llmcycle.train_step``
under a clock that moves one millisecond per read, so every time is the same in every run and
nothing can flake; what a planted regression changes (switched via an environment variable
between runs) is what the model *does*, and the deterministic counters catch it.
"""
from __future__ import annotations

import json

import pytest

# Inline pytester runs drop the modules first imported inside them: torch and transformers
# cannot be loaded twice, so they (and the plugin's lazily imported modules) are loaded here.
import pytest_llmcycle.measure.counters  # noqa: F401,E402
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.llm.hf  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import pytest_llmcycle.measure.steps  # noqa: F401,E402
import torch  # noqa: F401,E402
import transformers.models.llama.modeling_llama  # noqa: F401,E402

BASELINE = ".llmcycle/baselines.json"

INI = """
[pytest]
llmcycle_budget = 0.05
llmcycle_device = cpu
llmcycle_device_key = ci-runner
llmcycle_threads = 1
llmcycle_machine_check = false
"""

CONFTEST = '''
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

#: switched on between runs: "nocache" (KV cache off), "eager" (eager attention), "" (none)
PLANT = os.environ.get("PLANT", "")


class TickClock:
    """Each read is one millisecond after the previous: times depend only on how often code reads it."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        self.t += 1_000_000
        return self.t


@pytest.fixture
def llm(llmcycle):
    llmcycle.clock = TickClock()
    return llmcycle


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    m = LlamaForCausalLM(cfg).eval()
    if PLANT == "eager":
        m.set_attn_implementation("eager")
    return m


@pytest.fixture
def ids():
    return torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def gen_kwargs():
    return {"use_cache": False} if PLANT == "nocache" else {}
'''

GENERATE = """
def test_generate(llm, model, ids, gen_kwargs):
    g = llm.generate(model, ids, 4, **gen_kwargs)
    print(g)
"""

TRAIN_AND_GENERATE = """
import torch


def test_cycle(llm, model, ids, gen_kwargs):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay as recorded
    llm.train_step(lambda: model(ids, labels=ids).loss, model=model, optimizer=opt)
    model.eval()
    llm.generate(model, ids, 4, **gen_kwargs)
"""

NO_COUNTERS = """
import pytest


@pytest.mark.llmcycle(counters=False)
def test_generate(llm, model, ids, gen_kwargs):
    llm.generate(model, ids, 4, **gen_kwargs)
"""


@pytest.fixture
def project(pytester):
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def record(project, monkeypatch, **files):
    monkeypatch.delenv("PLANT", raising=False)
    project.makepyfile(**files)
    result = project.runpytest("--llmcycle-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    return json.loads((project.path / BASELINE).read_text())


def entries(data):
    (stages,) = data["devices"]["ci-runner"]["tests"].values()
    return stages


def test_generate_records_stages_with_counters_then_passes_unchanged(project, monkeypatch):
    data = record(project, monkeypatch, test_gen=GENERATE)
    stages = entries(data)
    assert set(stages) == {"prefill", "decode", "e2e"}
    assert stages["decode"]["unit"] == "token"
    assert stages["prefill"]["unit"] == stages["e2e"]["unit"] == "call"
    for s in stages.values():
        assert set(s["counters"]) == {"flops", "aten_ops", "alloc_bytes", "counted_by"}  # stamped with the counting rules
    # every time is a whole number of clock reads: TTFT one, each decode step one, end-to-end N+1
    assert stages["prefill"]["median_ms"] == 1.0
    assert stages["decode"]["median_ms"] == 1.0
    assert stages["e2e"]["median_ms"] == 5.0

    result = project.runpytest("-p", "no:cacheprovider", "-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*TTFT 1 ms, TPOT 1 ms*p99*tokens/s*", "*test_generate*decode*1 ms/token*1 ms/token*ok*"])


def test_kv_cache_switched_off_fails_on_decode_flops(project, monkeypatch):
    record(project, monkeypatch, test_gen=GENERATE)
    monkeypatch.setenv("PLANT", "nocache")
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*llmcycle: stage 'decode' regressed on ci-runner*",
            "*counter   flops per token: baseline * current * (*x); deterministic, compared exactly, no re-measure*",
            "*to accept the new numbers: pytest test_gen.py::test_generate --llmcycle-update*",
        ]
    )
    # the time did not move (the clock is the same): only the counters caught it
    result.stdout.fnmatch_lines(["*decode*1 ms/token*1 ms/token*+0.0%*regressed*"])


def test_eager_attention_fails_on_aten_ops(project, monkeypatch):
    record(project, monkeypatch, test_gen=GENERATE)
    monkeypatch.setenv("PLANT", "eager")
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stage 'prefill' regressed*", "*counter   aten_ops: baseline * current *"])
    result.stdout.fnmatch_lines(["*counter   aten_ops per token: baseline * current *"])


def test_training_and_decode_stages_form_one_cycle(project, monkeypatch):
    data = record(project, monkeypatch, test_cycle=TRAIN_AND_GENERATE)
    stages = entries(data)
    assert {"forward", "backward", "optimizer", "prefill", "decode", "e2e"} <= set(stages)
    # a linear layer's backward is twice its forward; SDPA's forward is 2 matmuls (q.k, p.v) and its
    # backward 5 (it recomputes the scores): half the forward's attention more. 1 layer, 2 heads of
    # 32, 12 tokens
    attention = 1 * 2 * (2 * 1 * 2 * 12 * 12 * 32)
    assert stages["backward"]["counters"]["flops"] == 2 * stages["forward"]["counters"]["flops"] + attention // 2
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*cycle T = forward + backward + optimizer + prefill + 3*decode*ok*"])


def test_counters_can_be_switched_off_per_test(project, monkeypatch):
    data = record(project, monkeypatch, test_gen=NO_COUNTERS)
    assert all("counters" not in s for s in entries(data).values())
    monkeypatch.setenv("PLANT", "nocache")
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)  # nothing counted, and the (fake) time did not move
