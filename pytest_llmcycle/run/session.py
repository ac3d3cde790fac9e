"""What the timing tests of one pytest run share: settings, device, baseline files, results.

Created cheaply at configure time; the device, thread count and baseline files are resolved
only when the first timing test needs them, so suites without timing tests pay nothing.
It holds the run's collaborators and hands them their inputs; the work is theirs: the files
(``storage.baseline.BaselineFiles``), taking turns on the device (``measure.lock``) and the
machine's speed (``measure.machine``).
"""
from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from ..config import Settings
from ..measure import device as devmod
from ..measure import machine
from ..measure.lock import DeviceTimingLock
from ..storage.baseline import BaselineError, Baselines, BaselineFiles, Entry
from .results import StageResult

#: the per-stage hard limit when --llmcycle-stage-timeout is not given: this, or 60x the budget
DEFAULT_STAGE_TIMEOUT_S = 300.0


class RunState:
    """The run's settings, device and baseline files, the results so far and the updates to
    write; one per pytest process (see ``keys.get_run``)."""

    def __init__(
        self,
        settings: Settings,
        rootdir: str | Path,
        *,
        stage_timeout_s: float | None = None,
        worker_index: int | None = None,
        worker_count: int = 1,
        pin_gpus: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.settings = settings
        #: names this run in the reference it stores; every xdist worker of a run shares it (the
        #: controller's testrunuid), so no worker takes a reference stored in this run as earlier
        self.run_id = run_id or uuid.uuid4().hex[:16]
        #: --llmcycle-stage-timeout: None = the default (see stage_limit_s), 0 = no limit
        self.stage_timeout_s = stage_timeout_s
        #: this process's xdist worker number (gw3 -> 3) and the number of workers, or None/1
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.pin_gpus = pin_gpus
        #: the baseline file, or one per test module with "{module}" in the path
        self.baselines = BaselineFiles.at(settings.baseline, rootdir)
        self.results: list[StageResult] = []
        #: (device_key, nodeid, stage, entry) to write at session finish
        self.pending: list[tuple[str, str, str, Entry]] = []
        self.written: list[str] = []
        self.written_files: list[str] = []
        #: why the updates were not written, shown in the summary (and failing the run)
        self.write_error: str | None = None
        #: a Ctrl-C stopped the reference workload's timing at session finish (entries written without it)
        self.reference_interrupted = False
        #: (nodeid, machine factor) of tests --llmcycle-update did not store: the machine read
        #: too far off its stored reference speed (see LLMCycle.finish)
        self.refused: list[tuple[str, float]] = []
        #: --llmcycle-against: head 0's coordinator of the processes (run.peers.Coordinator), or in
        #: one of its workers the connection to head 0 (run.peers.Peer); None otherwise
        self.peers: Any = None
        self.peer: Any = None
        self._device: str | None = None
        self._device_key: str | None = None
        self._timing_lock: DeviceTimingLock | None = None

    # ---- baseline files
    @property
    def baseline_path(self) -> Path:
        """The baseline file, or the per-module template."""
        return self.baselines.path

    def baseline_path_for(self, nodeid: str | None) -> Path:
        """The file that holds ``nodeid``'s baselines."""
        return self.baselines.path_for(nodeid)

    def shown_path(self, nodeid: str | None = None) -> str:
        """``nodeid``'s baseline file (or, with None, the file or template) as the terminal names it:
        relative to the working folder when inside it, else absolute, so a moved rootdir shows."""
        path = self.baselines.path if nodeid is None else self.baseline_path_for(nodeid)
        try:
            return str(Path(path).relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def load_baselines(self, nodeid: str | None = None) -> Baselines:
        """The (validated, loaded once) baseline file that holds ``nodeid``; raises BaselineError."""
        return self.baselines.load(nodeid)

    # ---- resolved lazily
    @property
    def device(self) -> str:
        if self._device is None:
            spec = self.settings.device
            if self.pin_gpus and self.worker_index is not None:
                spec = devmod.pin_worker_device(spec, self.worker_index)
            self._device = devmod.resolve_device(spec)
        return self._device

    @property
    def device_key(self) -> str:
        """``--llmcycle-device-key`` with its placeholders filled in, or the default key (see
        :func:`..measure.device.default_device_key`); raises ValueError for an unknown placeholder.

        Without the option, a baseline file recorded before keys named the CPU family (its
        entries under the full model, ``cpu-amd-epyc-7763-64-core-processor``, none under
        ``cpu-amd-epyc``) keeps being judged under the key it was recorded with.
        """
        if self._device_key is None:
            if self.settings.device_key:
                self._device_key = devmod.expand_device_key(self.settings.device_key, self.device)
            else:
                key = devmod.default_device_key(self.device)
                legacy = devmod.expand_device_key("{kind}-{model}", self.device)
                keys = self.baselines.device_keys()
                self._device_key = legacy if key not in keys and legacy in keys else key
        return self._device_key

    @property
    def threads(self) -> int:
        return self.settings.threads or devmod.default_threads()

    # ---- taking turns on the device
    def stage_limit_s(self, budget_s: float) -> float | None:
        """The hard limit of one measurement of a stage, in seconds; None for no limit."""
        if self.stage_timeout_s is None:
            return max(DEFAULT_STAGE_TIMEOUT_S, 60.0 * budget_s)
        return self.stage_timeout_s or None

    def timing_lock(self) -> DeviceTimingLock:
        """The device's timing lock, held around every timed section (``with run.timing_lock():``)."""
        if self._timing_lock is None:
            limit = self.stage_limit_s(self.settings.budget_s)
            # each holder keeps it at most one stage limit per measurement; every other worker may be ahead
            wait = None if limit is None else limit * max(2, self.worker_count + 1)
            self._timing_lock = DeviceTimingLock(self.device, wait)
        return self._timing_lock

    # ---- the machine's speed
    def machine_factor(self, sample_s: float = 0.0, nodeid: str | None = None) -> float | None:
        """Current / stored median of the reference workload in ``nodeid``'s baseline file, or
        None without a usable one stored by an earlier run (see :func:`..measure.machine.machine_factor`).

        A reference this run stored (another xdist worker wrote the file seconds ago) is no
        measure of how fast the machine was when the baselines were recorded: it is not used.
        """
        stored = machine.stored_earlier(self.load_baselines(nodeid).reference(self.device_key), self.run_id)
        return machine.machine_factor(stored, self.device, self.threads, self.timing_lock(), sample_s)

    # ---- writing
    def write_updates(self) -> None:
        """Merge pending entries into their baseline file(s) (atomic; keeps others' entries).

        Each file gets this device's reference workload when it has no usable one (measured
        at most once a run, shared by every file written).

        Every file is checked first (folder, permissions, name length): if one cannot be
        written, none is, and the error names each such file. A file that still fails while
        being written (a full disk) does not stop the others; the error then names it and the
        files that were written, and its entries stay pending.
        """
        if not self.pending:
            return
        groups = self.baselines.by_file(self.pending)
        problems = self.baselines.write_problems([path for path, _ in groups])
        if problems:
            raise BaselineError(
                "; ".join(problems) + f" (none of the {len(groups)} baseline file(s) was written)"
                if len(groups) > 1 else problems[0]
            )
        # the batch lengths the reference is timed in: those of the stages recorded (see measure.machine)
        lengths = [machine.stage_sample_s(e.median_ms, e.unit) for k, _, _, e in self.pending if k == self.device_key]
        measured: Entry | None = None
        failed: list[tuple[Path, list, str]] = []
        done: list[str] = []
        for path, entries in groups:
            try:
                refs = {}
                if any(k == self.device_key for k, _, _, _ in entries):
                    ref = self.load_baselines(entries[0][1]).reference(self.device_key)
                    if ref is None or not machine.reference_usable(ref, self.threads) or self.settings.update_all:
                        measured = measured or self._reference_now(lengths)
                        if measured is not None:
                            refs[self.device_key] = measured
                    elif machine.missing_buckets(ref, lengths):
                        # a stage longer than any recorded so far: its batch length is timed and
                        # added; the stored ones stay (the entries recorded against them stand)
                        extra = self._reference_now(machine.missing_buckets(ref, lengths))
                        if extra is not None:
                            refs[self.device_key] = machine.with_buckets(ref, extra)
                self.baselines.merge(path, entries, refs, append=self.settings.update_append)
            except Exception as e:  # the next file may well be writable: try it, then say which failed
                failed.append((path, entries, str(e) if isinstance(e, (BaselineError, OSError)) else f"{type(e).__name__}: {e}"))
                continue
            done.append(str(path))
            self.written_files.append(str(path))
            self.written += [f"{k} {n} {s}" for k, n, s, _ in entries]
        self.pending = [row for _, entries, _ in failed for row in entries]
        if failed:
            if len(groups) == 1:
                raise BaselineError(failed[0][2])
            wrote = f"written: {', '.join(done)}" if done else "no file was written"
            raise BaselineError(
                f"{len(failed)} of {len(groups)} baseline files failed: "
                + "; ".join(reason for _, _, reason in failed) + f" ({wrote})"
            )

    def _reference_now(self, sample_s: list[float] | tuple = ()) -> Entry | None:
        """The reference workload timed now for :meth:`write_updates` (in 0.1 ms batches and in
        the buckets of the stages' sample lengths ``sample_s``), or None after a Ctrl-C
        stopped its timing: a Ctrl-C at the end of a run must not cost the run's entries, so they
        are written without it (the file keeps its stored reference, if any) and
        ``reference_interrupted`` makes the summary say so."""
        if self.reference_interrupted:
            return None
        try:
            return machine.reference_entry(self.device, self.threads, self.timing_lock(), sample_s, self.run_id)
        except KeyboardInterrupt:
            self.reference_interrupted = True
            return None

    # ---- xdist: a worker's run handed to the controller
    def adopt_device(self, device: str | None, device_key: str | None) -> None:
        """Take a device another process resolved: the controller shows its workers' devices
        (the first device seen, every device key) instead of resolving one of its own."""
        if device and self._device is None:
            self._device = device
        if device_key:
            keys = set(filter(None, (self._device_key or "").split(", "))) | {device_key}
            self._device_key = ", ".join(sorted(keys))

    def to_worker_output(self) -> dict:
        """This worker's results and writes as plain data (the device only if it was resolved)."""
        results = []
        for r in self.results:
            d = r.to_dict()
            if r.baseline is not None:  # to_dict keeps only its median; the HTML report plots its samples
                d["baseline"] = asdict(r.baseline)
            results.append(d)
        return {
            "results": results,
            "written": list(self.written),
            "written_files": list(self.written_files),
            "write_error": self.write_error,
            "refused": [list(x) for x in self.refused],
            "device": self._device,
            "device_key": self._device_key,
        }

    def absorb_worker_output(self, data: Mapping[str, Any], worker: str = "") -> None:
        """Add one worker's :meth:`to_worker_output` to this (the controller's) run."""
        self.results.extend(StageResult.from_dict(d) for d in data.get("results", ()))
        self.results.sort(key=lambda r: r.nodeid)  # stable: one order whichever worker finished first
        self.written.extend(data.get("written", ()))
        self.written_files.extend(data.get("written_files", ()))
        self.refused.extend((str(n), float(m)) for n, m in data.get("refused", ()))
        if data.get("write_error"):
            err = f"{worker}: {data['write_error']}" if worker else data["write_error"]
            self.write_error = f"{self.write_error}; {err}" if self.write_error else err
        self.adopt_device(data.get("device"), data.get("device_key"))

