"""Layer 1, pure numbers: estimators (``stats``) and the one judging rule (``verdict``).

Nothing here reads a clock, a file or a pytest object; numpy is its only dependency.
"""
