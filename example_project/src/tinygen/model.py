"""A small Llama built from a config with a fixed seed: same weights on every machine."""
from __future__ import annotations

from .tokenizer import ByteTokenizer


def model_config(**overrides):
    from transformers import LlamaConfig

    tok = ByteTokenizer()
    kw = dict(
        vocab_size=tok.vocab_size,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def build_model(seed: int = 0, **overrides):
    """The model in eval mode, float32, on the CPU; ``overrides`` change the config."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config(**overrides)).eval()
