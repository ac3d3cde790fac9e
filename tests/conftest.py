"""Shared fixtures: tiny real models built from configs (no hub downloads)."""
from __future__ import annotations

import pytest


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_gpt2_config(**overrides):
    from transformers import GPT2Config

    kw = dict(vocab_size=512, n_embd=128, n_layer=2, n_head=4, n_positions=256)
    kw.update(overrides)
    return GPT2Config(**kw)


@pytest.fixture(scope="session")
def tiny_llama():
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def tiny_gpt2():
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config()).eval()


@pytest.fixture
def input_ids():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (1, 32), generator=g)


@pytest.fixture(autouse=True)
def _no_job_summary(monkeypatch):
    """Inner pytest runs must not append their reports to a real CI job summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
