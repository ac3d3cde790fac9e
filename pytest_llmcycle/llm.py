"""LLM-specific stages on the ``llmcycle`` fixture (generate, decode, backward, A/B, scaling).

A mixin: :class:`pytest_llmcycle.fixture.LLMCycle` inherits it, and every method here reaches
the core through ``self.record(...)``, ``self.settings``, ``self.device`` and ``self.clock``.
"""
from __future__ import annotations


class LLMStages:
    pass
