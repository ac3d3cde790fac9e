"""Layer 5, one pytest run: the per-stage result record (``results``), the run's shared state
(``session``), the ``llmcycle`` fixture object (``fixture``) and pytest-xdist roles (``xdist``).
"""
