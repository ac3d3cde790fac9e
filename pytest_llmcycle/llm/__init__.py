"""Layer 4, the LLM helpers: ``generate``, ``tokens``, ``train_step``, ``counted``, ``scaling``
and ``ab`` (``stages``), with token metrics (``decode``), Hugging Face ``generate`` marking
(``hf``), power-law fits (``scaling``) and interleaved A/B (``ab``).

They reach the fixture only through the narrow :class:`stages.Recorder` interface.
"""
