"""Wrong arguments to the LLM helpers: refused before anything is timed, with the argument, what
was given and the fix in one sentence, and a traceback that ends at the user's line.

The models are real and tiny (a linear layer, a nanoGPT-shaped module, a Llama built from a
config): the mistakes are the ones made with real models, such as passing ``model(ids)`` where
``lambda: model(ids)`` belongs.
"""
from __future__ import annotations

import pytest
import torch

from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.fixture import LLMCycle
from pytest_llmcycle.run.session import RunState
from test_llm_models import TinyGPT, TinyGPTWithGenerate


def make(tmp_path) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.02, min_rounds=3, warmup_rounds=0, machine_check=False, counters=False)
    return LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s)


@pytest.fixture
def lc(tmp_path):
    return make(tmp_path)


@pytest.fixture
def ids():
    return torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- ab


def test_ab_refuses_a_result_where_a_callable_belongs(lc, ids):
    m = TinyGPT()
    with pytest.raises(TypeError, match=r"llmcycle\.ab: a must be a callable: pass `lambda: model\(ids\)` \(got a tuple\)"):
        lc.ab(m(ids), lambda: m(ids))
    with pytest.raises(TypeError, match=r"llmcycle\.ab: b must be a callable: pass `lambda: model\(ids\)` \(got None\)"):
        lc.ab(lambda: m(ids), None)
    assert lc.results == []


def test_ab_refuses_a_model_without_its_inputs(lc, ids):
    m = torch.nn.Linear(4, 4)
    with pytest.raises(TypeError, match=r"llmcycle\.ab: a must be a callable that takes no arguments, not a model that needs its inputs: pass `lambda: model\(ids\)`"):
        lc.ab(m, lambda: m(torch.ones(4)))


def test_ab_refuses_a_callable_that_needs_arguments(lc):
    with pytest.raises(TypeError, match=r"llmcycle\.ab: b must be a callable that takes no arguments: pass `lambda: model\(ids\)`"):
        lc.ab(lambda: None, lambda x: x)


def test_ab_names_and_budget_are_checked(lc):
    with pytest.raises(ValueError, match=r"names must be two different labels, e.g. names=\('eager', 'sdpa'\) \(got 'ab'\)"):
        lc.ab(lambda: None, lambda: None, names="ab")
    with pytest.raises(ValueError, match=r"names must be two different labels.*\(got \('x', 'x'\)\)"):
        lc.ab(lambda: None, lambda: None, names=("x", "x"))
    with pytest.raises(ValueError, match=r"llmcycle\.ab: budget is in seconds and must be positive, e.g. budget=2.0 \(got -1\)"):
        lc.ab(lambda: None, lambda: None, budget=-1)


# ----------------------------------------------------------------------------- tokens


def test_tokens_refuses_a_loop_that_is_not_callable_or_takes_no_tick(lc, ids):
    m = TinyGPT()
    with pytest.raises(TypeError, match=r"llmcycle\.tokens: loop must be a callable: pass `def loop\(tick\): \.\.\.` that calls tick\(\) after each token \(got a tuple\)"):
        lc.tokens(m(ids))
    with pytest.raises(TypeError, match=r"llmcycle\.tokens: loop must be a callable that takes tick: pass `def loop\(tick\): \.\.\.`"):
        lc.tokens(lambda: m(ids))
    assert lc.results == []


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_tokens=0), "n_tokens must be a whole number >= 1, got 0"),
        (dict(n_tokens=2.5), "n_tokens must be a whole number >= 1, got 2.5"),
        (dict(batch=0), "batch must be a whole number >= 1, got 0"),
        (dict(prompt_length=-1), "prompt_length must be a whole number >= 0, got -1"),
    ],
)
def test_tokens_counts_are_checked_up_front(lc, kw, message):
    with pytest.raises(ValueError, match="llmcycle.tokens: " + message.replace("(", r"\(").replace(".", r"\.")):
        lc.tokens(lambda tick: tick(), **kw)


def test_tokens_accepts_the_sizes_a_tensor_gives(lc, ids):
    # shape entries are ints, but a numpy or 0-d tensor count is a whole number too
    g = lc.tokens(lambda tick: tick(), n_tokens=torch.tensor(1), prompt_length=ids.shape[1])
    assert g.prompt_length == 8 and g.stats.n_tokens == 1


# ----------------------------------------------------------------------------- generate


def test_generate_refuses_a_model_without_generate(lc, ids):
    with pytest.raises(TypeError, match=r"llmcycle\.generate: model has no \.generate\(\) \(got a TinyGPT\): pass a Hugging Face model.*use llmcycle\.tokens\(loop\)"):
        lc.generate(TinyGPT(), ids, 4)
    with pytest.raises(TypeError, match=r"model has no \.generate\(\) \(got a str\)"):
        lc.generate("gpt2", ids, 4)


def test_generate_refuses_a_generate_that_is_not_hugging_faces(lc, ids):
    with pytest.raises(TypeError, match=r"llmcycle\.generate: model\.generate is not Hugging Face's \(the model has no generation_config\); .*llmcycle\.tokens\(loop\)"):
        lc.generate(TinyGPTWithGenerate(), ids, 4)


def test_generate_checks_the_token_count(lc, tiny_llama, input_ids):
    with pytest.raises(ValueError, match=r"llmcycle\.generate: max_new_tokens must be a whole number >= 1, got 0"):
        lc.generate(tiny_llama, input_ids, 0)
    assert lc.results == []


# ----------------------------------------------------------------------------- train_step, counted, scaling


def test_train_step_refuses_a_loss_instead_of_a_loss_function(lc, ids):
    m = TinyGPT()
    with pytest.raises(TypeError, match=r"llmcycle\.train_step: loss_fn must be a callable: pass `lambda: model\(\*\*batch\)\.loss` \(got a Tensor\)"):
        lc.train_step(m(ids, targets=ids)[1])
    with pytest.raises(TypeError, match=r"llmcycle\.train_step: optimizer must have \.step\(\), e\.g\. torch\.optim\.AdamW\(model\.parameters\(\)\) \(got a list\)"):
        lc.train_step(lambda: m(ids, targets=ids)[1], model=m, optimizer=list(m.parameters()))
    assert lc.results == []


def test_counted_names_swapped_arguments_and_a_result_passed_as_fn(lc, ids):
    m = TinyGPT()
    fn = lambda: m(ids)  # noqa: E731
    with pytest.raises(TypeError, match=r"llmcycle\.counted: the first argument is the stage's name, a non-empty string: llmcycle\.counted\(\"forward\", lambda: model\(ids\)\) \(got a function\)"):
        lc.counted(fn, "forward")
    with pytest.raises(TypeError, match=r"llmcycle\.counted: fn must be a callable: pass `lambda: model\(ids\)` \(got a tuple\)"):
        lc.counted("forward", m(ids))


def test_scaling_refuses_a_make_that_returns_a_result(lc):
    m = TinyGPT()

    def make_result(n):
        return m(torch.zeros(1, n, dtype=torch.long))  # the call itself, not a callable

    with pytest.raises(TypeError, match=r"llmcycle\.scaling: make\(size\) must return the callable to time, not its result: .*\(make\(4\) returned a tuple\)"):
        lc.scaling("prefill", make_result, [4, 8])
    with pytest.raises(TypeError, match=r"llmcycle\.scaling: make must be a callable that takes the size: pass `lambda n: \(lambda: model\(ids\[:, :n\]\)\)`"):
        lc.scaling("prefill", lambda: None, [4, 8])


@pytest.mark.parametrize(
    "sizes, error, message",
    [
        ([4], ValueError, r"llmcycle\.scaling needs at least two different sizes, e\.g\. \[16, 32, 64\]"),
        ([0, 8], ValueError, r"llmcycle\.scaling: sizes must be positive numbers \(e\.g\. prompt lengths\), got \[0, 8\]"),
        (8, TypeError, r"llmcycle\.scaling: sizes must be a list of sizes, e\.g\. \[16, 32, 64\] \(got a int\)"),
    ],
)
def test_scaling_sizes_are_checked_up_front(lc, sizes, error, message):
    with pytest.raises(error, match=message):
        lc.scaling("prefill", lambda n: (lambda: None), sizes)


# ----------------------------------------------------------------------------- where the error points


def test_a_wrong_argument_fails_at_the_users_line_not_inside_the_plugin(pytester):
    pytester.makeini("[pytest]\nllmcycle_device = cpu\nllmcycle_threads = 1\n")
    pytester.makepyfile(
        test_ab="""
        def test_speedup(llmcycle):
            result = 3.0  # a model's output where a callable belongs
            llmcycle.ab(result, lambda: None)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*llmcycle.ab(result, lambda: None)",
            "E*TypeError: llmcycle.ab: a must be a callable: pass `lambda: model(ids)` (got a float)",
            "test_ab.py:3: TypeError",
        ]
    )
    out = result.stdout.str()
    assert "stages.py" not in out and "fixture.py" not in out
