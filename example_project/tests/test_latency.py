"""Latency tests: each stage is compared with .llmcycle/baselines.json and fails the test when
it got slower by more than the threshold (pyproject.toml: 25 %), significantly, confirmed by a
re-measure. Record new numbers with ``pytest --llmcycle-update`` and commit the file.
"""
import pytest
import torch

from tinygen import build_model, greedy_tokens
from tinygen.train import lm_loss

NEW_TOKENS = 12


def test_generate(llmcycle, model, prompt_ids):
    """Stages prefill (time to first token), decode (per token) and e2e, from our own loop."""
    ids = prompt_ids.to(llmcycle.device)
    g = llmcycle.tokens(
        lambda tick: greedy_tokens(model, ids, NEW_TOKENS, on_token=tick),
        n_tokens=NEW_TOKENS,
        prompt_length=ids.shape[1],
    )
    print(g)  # TTFT, TPOT, per-token percentiles, tokens/s (shown with -s)


def test_train_step(llmcycle, prompt_ids):
    """Stages forward, backward and optimizer of one fine-tuning step."""
    model = build_model(seed=1).train().to(llmcycle.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = prompt_ids[:, :48].to(llmcycle.device)
    llmcycle.train_step(lambda: lm_loss(model, batch), model=model, optimizer=opt)


@pytest.mark.llmcycle(counters=False)  # nothing stored: an A/B needs no baseline
def test_kv_cache_is_faster(llmcycle, model, prompt_ids):
    """The KV cache must keep decoding clearly faster than recomputing the whole sequence."""
    ids = prompt_ids.to(llmcycle.device)
    r = llmcycle.ab(
        lambda: greedy_tokens(model, ids, NEW_TOKENS, use_cache=False),
        lambda: greedy_tokens(model, ids, NEW_TOKENS, use_cache=True),
        names=("no cache", "kv cache"),
    )
    r.assert_faster(1.2)
