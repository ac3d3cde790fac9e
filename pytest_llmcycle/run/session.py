"""State shared by all timing tests of one pytest run: settings, device, baselines, results.

Created cheaply at configure time; the device, thread count and baseline file are resolved
only when the first timing test needs them, so suites without timing tests pay nothing.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..measure import device as devmod
from ..storage.baseline import PROCESS_MEDIANS, Baselines, BaselineError, Entry, merge_into_file, process_medians, process_range
from ..config import Settings
from .results import StageResult

if TYPE_CHECKING:
    import numpy as np


#: the per-stage hard limit when --llmcycle-stage-timeout is not given: this, or 60x the budget
DEFAULT_STAGE_TIMEOUT_S = 300.0


class LockWaitTimeout(RuntimeError):
    """Waited too long for another process's timed section on the same device."""


def timing_lock_path(device: str) -> str:
    """One lock file per device (and user), in the temp dir: all timed sections on a device
    (xdist workers, parallel pytest runs) take turns, wherever their baseline files are."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
    return os.path.join(tempfile.gettempdir(), f"pytest-llmcycle-timing-{uid}-{safe}.lock")


#: in --llmcycle-baseline, replaced by the test module's name: one baseline file per module
MODULE_PLACEHOLDER = "{module}"


def module_file_stem(nodeid: str) -> str:
    """``tests/llm/test_decode.py::test_x[a]`` -> ``tests.llm.test_decode``: a file name, never a path.

    Anything but letters, digits, ``_``, ``.`` and ``-`` becomes ``_`` and runs of dots fold
    into one, so a module name can neither leave the baseline folder nor hide a file.
    """
    module = nodeid.split("::", 1)[0]
    if module.endswith(".py"):
        module = module[:-3]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", module.replace("\\", ".").replace("/", "."))
    stem = re.sub(r"\.{2,}", ".", stem).strip(".")
    return stem or "_"


def ns_to_ms(samples: Any) -> "np.ndarray":
    """Nanosecond samples as a float array of milliseconds (the verdicts and summaries read
    arrays: no list of Python floats is built only to be converted again)."""
    import numpy as np

    return np.asarray(samples, dtype=float) / 1e6


#: the most recent recording processes an entry remembers
MAX_PROCESSES = 8


def append_process(stored: Entry | None, new: Entry) -> Entry:
    """``new`` added to ``stored`` as one more recording process.

    The stored samples stand for the k processes recorded so far, so the new process gets
    1/(k+1) of the pooled 64 samples; the entry's median and quartiles are the pooled sample's,
    and it lists each process's median (the last :data:`MAX_PROCESSES`). A stored entry of
    another unit, environment or counters is replaced, not pooled.
    """
    from ..engine import stats
    from ..storage.baseline import STORED_SAMPLES, round_sig
    from ..engine.verdict import env_mismatch

    own = round_sig(new.median_ms)
    if stored is None or stored.unit != new.unit or env_mismatch(dict(stored.env), dict(new.env)) or (
        dict(stored.counters) != dict(new.counters)
    ):
        return replace(new, extra={**new.extra, PROCESS_MEDIANS: [own]})
    medians = process_medians(stored) or [round_sig(stored.median_ms)]
    share = max(1, round(STORED_SAMPLES / len(medians)))
    pooled = stats.sorted_array(list(stored.samples_ms) + stats.thin(new.samples_ms, share))
    s = stats.summarize(pooled, presorted=True)
    return replace(
        new,
        median_ms=s.median,
        q1_ms=s.q1,
        q3_ms=s.q3,
        n=stored.n + new.n,
        samples_ms=tuple(stats.thin(pooled, STORED_SAMPLES, presorted=True)),
        extra={**stored.extra, **new.extra, PROCESS_MEDIANS: (medians + [own])[-MAX_PROCESSES:]},
    )


def entry_from_samples(samples_ms, unit, cold_ms, env, counters=None, extra=None) -> Entry:
    from ..engine import stats
    from ..storage.baseline import STORED_SAMPLES

    x = stats.sorted_array(samples_ms)  # one sort for the quartiles and the stored samples
    s = stats.summarize(x, presorted=True)
    return Entry(
        median_ms=s.median,
        q1_ms=s.q1,
        q3_ms=s.q3,
        n=s.n,
        samples_ms=tuple(stats.thin(x, STORED_SAMPLES, presorted=True)),
        unit=unit,
        cold_ms=cold_ms,
        env=env,
        counters=counters or {},
        extra=extra or {},
    )


class RunState:
    def __init__(
        self,
        settings: Settings,
        rootdir: Path,
        *,
        stage_timeout_s: float | None = None,
        worker_index: int | None = None,
        worker_count: int = 1,
        pin_gpus: bool = False,
    ) -> None:
        self.settings = settings
        #: --llmcycle-stage-timeout: None = the default (see stage_limit_s), 0 = no limit
        self.stage_timeout_s = stage_timeout_s
        #: this process's xdist worker number (gw3 -> 3) and the number of workers, or None/1
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.pin_gpus = pin_gpus
        self._timing_locks: dict[str, Any] = {}
        path = Path(os.path.expanduser(settings.baseline))
        # ".." is collapsed lexically (no stray folders are created for "a/../b.json");
        # symlinks are kept here and followed when the file is written (baseline.atomic_write_text)
        self.baseline_path = Path(os.path.abspath(path if path.is_absolute() else Path(rootdir) / path))
        #: "{module}" in the path: one file per test module (baseline_path is then the template)
        self.per_module = MODULE_PLACEHOLDER in str(self.baseline_path)
        self._loaded: dict[Path, Baselines] = {}
        self.results: list[StageResult] = []
        self.pending: list[tuple[str, str, str, Entry]] = []
        self.written: list[str] = []
        self.written_files: list[str] = []
        self._device: str | None = None
        self._device_key: str | None = None

    # ---- resolved lazily
    def baseline_path_for(self, nodeid: str | None) -> Path:
        """The file that holds ``nodeid``'s baselines (the one file, or its module's file)."""
        if not self.per_module:
            return self.baseline_path
        if nodeid is None:
            raise ValueError("with {module} in the baseline path, a test's node id picks the file")
        return Path(str(self.baseline_path).replace(MODULE_PLACEHOLDER, module_file_stem(nodeid)))

    def load_baselines(self, nodeid: str | None = None) -> Baselines:
        """Load (once) and validate the baseline file that holds ``nodeid``; raises BaselineError."""
        path = self.baseline_path_for(nodeid)
        loaded = self._loaded.get(path)
        if loaded is None:
            loaded = self._loaded[path] = Baselines.load(path)
        return loaded

    def preload(self) -> None:
        """Load and validate every baseline file now (before any test runs): a bad one fails early."""
        if not self.per_module:
            self.load_baselines()
            return
        import glob

        pattern = glob.escape(str(self.baseline_path)).replace(MODULE_PLACEHOLDER, "*")
        for name in sorted(glob.glob(pattern)):
            p = Path(name)
            if p not in self._loaded:
                self._loaded[p] = Baselines.load(p)

    def forget_loaded(self) -> None:
        """Read the baseline files again on next use (after something else wrote them)."""
        self._loaded.clear()

    @property
    def device(self) -> str:
        if self._device is None:
            spec = self.settings.device
            if self.pin_gpus and self.worker_index is not None:
                from .xdist import pin_worker_device

                spec = pin_worker_device(spec, self.worker_index)
            self._device = devmod.resolve_device(spec)
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
        target = str(self.baseline_path).replace(MODULE_PLACEHOLDER, "_")  # per module: its folder
        p = Path(os.path.realpath(target))  # a symlink is written at its target
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

    # ---- taking turns on the device
    def stage_limit_s(self, budget_s: float) -> float | None:
        """The hard limit of one measurement of a stage, in seconds; None for no limit."""
        if self.stage_timeout_s is None:
            return max(DEFAULT_STAGE_TIMEOUT_S, 60.0 * budget_s)
        return self.stage_timeout_s or None

    @contextmanager
    def timing_lock(self) -> Iterator[None]:
        """Hold the device's timing lock: timed sections of xdist workers (and of other
        pytest-llmcycle runs of this user on this machine) never overlap on one device.

        Reentrant within a process. The OS releases it when a holder dies, so a killed
        worker never leaves it held.
        """
        from filelock import FileLock, Timeout

        device = self.device
        lock = self._timing_locks.get(device)
        if lock is None:
            lock = self._timing_locks[device] = FileLock(timing_lock_path(device), is_singleton=True)
        limit = self.stage_limit_s(self.settings.budget_s)
        # each holder keeps it at most one stage limit per measurement; every other worker may be ahead
        wait = -1 if limit is None else limit * max(2, self.worker_count + 1)
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise LockWaitTimeout(
                f"llmcycle: waited {wait:.0f} s for the timing lock of device {device} ({lock.lock_file}), "
                "held by another pytest-llmcycle process on this machine; a stuck run? "
                "Stop it, or raise --llmcycle-stage-timeout"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # ---- the machine's speed
    def machine_factor(self, sample_s: float = 0.0, nodeid: str | None = None) -> float | None:
        """Current / stored median of the reference workload, or None without a stored one.

        ``sample_s`` is how long one sample of the suspect stage lasts: the reference is timed
        in batches that long, so a busy neighbour's time slices interrupt both alike (a
        sub-millisecond reference slips between them while a 10 ms stage does not). The stored
        reference is the one in ``nodeid``'s baseline file.
        """
        from ..measure import machine
        from ..engine import stats
        from ..measure.timing import pinned_threads

        stored = self.load_baselines(nodeid).reference(self.device_key)
        if stored is None or not self._reference_usable(stored):
            return None
        with self.timing_lock(), pinned_threads(self.threads):
            m = machine.measure_reference(self.device, sample_s=sample_s)
        return stats.summarize(ns_to_ms(m.samples_ns)).median / stored.median_ms

    def _reference_env(self) -> dict:
        env: dict[str, Any] = {"threads": self.threads}
        versions = devmod.library_versions()
        if "torch" in versions:
            env["torch"] = versions["torch"]
        return env

    def _reference_usable(self, stored: Entry) -> bool:
        """A reference of another workload, thread count or torch measures another machine speed."""
        from ..measure import machine
        from ..engine.verdict import env_mismatch

        return stored.extra.get("workload") == machine.workload_name() and not env_mismatch(dict(stored.env), self._reference_env())

    def reference_entry(self) -> Entry:
        from ..measure import machine
        from ..measure.timing import pinned_threads

        with self.timing_lock(), pinned_threads(self.threads):
            m = machine.measure_reference(self.device)
        return entry_from_samples(
            ns_to_ms(m.samples_ns), "call", None, self._reference_env(), extra={"workload": machine.workload_name()}
        )

    # ---- writing
    def write_updates(self) -> None:
        """Merge pending entries into their baseline file(s) (atomic; keeps others' entries).

        Each file gets this device's reference workload when it has no usable one (measured
        at most once a run, shared by every file written).
        """
        if not self.pending:
            return
        by_file: dict[Path, list] = {}
        for item in self.pending:
            by_file.setdefault(self.baseline_path_for(item[1]), []).append(item)
        measured: Entry | None = None
        for path, entries in sorted(by_file.items()):
            stored = self.load_baselines(entries[0][1])
            refs = {}
            if any(k == self.device_key for k, _, _, _ in entries):
                ref = stored.reference(self.device_key)
                if ref is None or not self._reference_usable(ref) or self.settings.update_all:
                    measured = measured or self.reference_entry()
                    refs[self.device_key] = measured
            merge_into_file(path, entries, refs, combine=append_process if self.settings.update_append else None)
            self.written_files.append(str(path))
            self.written += [f"{k} {n} {s}" for k, n, s, _ in entries]
        self.pending = []


__all__ = [
    "RunState", "BaselineError", "PROCESS_MEDIANS", "append_process", "entry_from_samples", "ns_to_ms", "process_range",
]
