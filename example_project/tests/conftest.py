"""Shared fixtures: the tokenizer, the tiny model and a fixed prompt (built once per session)."""
import pytest

PROMPT = "The quick brown fox jumps over the lazy dog. " * 2  # 90 bytes -> 91 tokens with <bos>


@pytest.fixture(scope="session")
def tokenizer():
    from tinygen import ByteTokenizer

    return ByteTokenizer()


@pytest.fixture(scope="session")
def model():
    from tinygen import build_model

    return build_model(seed=0)


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    import torch

    return torch.tensor([tokenizer.encode(PROMPT)])
