"""State shared by all timing tests of one pytest run: settings, device, baselines, results.

Created cheaply at configure time; the device, thread count and baseline file are resolved
only when the first timing test needs them, so suites without timing tests pay nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import device as devmod
from .baseline import Baselines, BaselineError, Entry, merge_into_file
from .config import Settings
from .results import StageResult


def ns_to_ms(samples: Any) -> list[float]:
    return [s / 1e6 for s in samples]


def entry_from_samples(samples_ms, unit, cold_ms, env, counters=None, extra=None) -> Entry:
    from . import stats
    from .baseline import STORED_SAMPLES

    s = stats.summarize(samples_ms)
    return Entry(
        median_ms=s.median,
        q1_ms=s.q1,
        q3_ms=s.q3,
        n=s.n,
        samples_ms=tuple(stats.thin(samples_ms, STORED_SAMPLES)),
        unit=unit,
        cold_ms=cold_ms,
        env=env,
        counters=counters or {},
        extra=extra or {},
    )


class RunState:
    def __init__(self, settings: Settings, rootdir: Path) -> None:
        self.settings = settings
        path = Path(os.path.expanduser(settings.baseline))
        # ".." is collapsed lexically (no stray folders are created for "a/../b.json");
        # symlinks are kept here and followed when the file is written (baseline.atomic_write_text)
        self.baseline_path = Path(os.path.abspath(path if path.is_absolute() else Path(rootdir) / path))
        self.baselines: Baselines | None = None
        self.results: list[StageResult] = []
        self.pending: list[tuple[str, str, str, Entry]] = []
        self.written: list[str] = []
        self._device: str | None = None
        self._device_key: str | None = None
        self._reference_cache: dict[str, float] = {}

    # ---- resolved lazily
    def load_baselines(self) -> Baselines:
        """Load (once) and validate the baseline file; raises BaselineError."""
        if self.baselines is None:
            self.baselines = Baselines.load(self.baseline_path)
        return self.baselines

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = devmod.resolve_device(self.settings.device)
        return self._device

    @property
    def device_key(self) -> str:
        if self._device_key is None:
            self._device_key = self.settings.device_key or devmod.default_device_key(self.device)
        return self._device_key

    @property
    def threads(self) -> int:
        return self.settings.threads or devmod.default_threads()

    def check_writable(self) -> str | None:
        """Why the baseline file could not be written, or None; checked before a long run."""
        p = Path(os.path.realpath(self.baseline_path))  # a symlink is written at its target
        folder = p.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            return f"cannot create the baseline file {p}: {folder} is not a folder"
        if p.exists() and not os.access(p, os.W_OK):
            return f"baseline file {p} is not writable"
        if not os.access(folder, os.W_OK):
            return f"cannot create the baseline file {p}: folder {folder} is not writable"
        if p.exists() and p.is_dir():
            return f"baseline path {p} is a folder; give a .json file path"
        return None

    # ---- the machine's speed
    def machine_factor(self) -> float | None:
        """Current / stored median of the reference workload, or None without a stored one."""
        from . import machine, stats
        from .timing import pinned_threads

        stored = self.load_baselines().reference(self.device_key)
        if stored is None or not self._reference_usable(stored):
            return None
        with pinned_threads(self.threads):
            m = machine.measure_reference(self.device)
        return stats.summarize(ns_to_ms(m.samples_ns)).median / stored.median_ms

    def _reference_env(self) -> dict:
        env: dict[str, Any] = {"threads": self.threads}
        if "torch" in devmod.library_versions():
            env["torch"] = devmod.library_versions()["torch"]
        return env

    def _reference_usable(self, stored: Entry) -> bool:
        """A reference of another workload, thread count or torch measures another machine speed."""
        from . import machine
        from .verdict import env_mismatch

        return stored.extra.get("workload") == machine.workload_name() and not env_mismatch(dict(stored.env), self._reference_env())

    def reference_entry(self) -> Entry:
        from . import machine
        from .timing import pinned_threads

        with pinned_threads(self.threads):
            m = machine.measure_reference(self.device)
        return entry_from_samples(
            ns_to_ms(m.samples_ns), "call", None, self._reference_env(), extra={"workload": machine.workload_name()}
        )

    # ---- writing
    def write_updates(self) -> None:
        """Merge pending entries into the baseline file (atomic; keeps others' entries)."""
        if not self.pending:
            return
        keys = sorted({k for k, _, _, _ in self.pending})
        refs = {}
        stored = self.load_baselines()
        for key in keys:
            ref = stored.reference(key) if key == self.device_key else None
            if key == self.device_key and (ref is None or not self._reference_usable(ref) or self.settings.update_all):
                refs[key] = self.reference_entry()
        merge_into_file(self.baseline_path, self.pending, refs)
        self.written = [f"{k} {n} {s}" for k, n, s, _ in self.pending]
        self.pending = []


__all__ = ["RunState", "BaselineError", "entry_from_samples", "ns_to_ms"]
