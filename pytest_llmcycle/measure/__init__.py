"""Layer 3, taking measurements: devices and synchronization (``device``), adaptive rounds
(``timing``), marks inside a call (``steps``), deterministic counters (``counters``), the
reference workload that measures the machine (``machine``) and the device timing lock (``lock``).

Never judges, never renders; torch is imported inside functions only.
"""
