"""Layer 2, what is kept between runs: the committed baseline file (``baseline``: entries,
format, validation, atomic merging writes) and the optional history store (``history``).
"""
