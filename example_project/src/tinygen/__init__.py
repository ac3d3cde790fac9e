"""tinygen: a tiny text generator (byte-level tokenizer + a small Llama), the example project
that pytest-llmcycle's README walks through. Nothing is downloaded: the tokenizer is bytes and
the model is built from a config with a fixed seed.
"""
from .generate import generate, greedy_tokens
from .model import build_model, model_config
from .tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "build_model", "generate", "greedy_tokens", "model_config"]
__version__ = "0.1.0"
