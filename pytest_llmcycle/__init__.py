"""pytest-llmcycle: LLM inference latency as tests that can fail.

Kept import-light: ``import pytest_llmcycle`` pulls in neither torch nor numpy.
"""
__version__ = "0.2.0"
