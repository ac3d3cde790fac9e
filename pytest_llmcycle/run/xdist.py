"""pytest-xdist support: workers take turns on a device, may get a GPU each, and the
controller shows one summary and writes one report for the whole run.

Registered by ``plugin.py`` only when xdist is active, split by role as xdist itself is:

* a **worker** times its tests (taking turns with the other workers through
  :meth:`RunState.timing_lock`, one lock per device), merges its own ``--llmcycle-update``
  entries into the baseline file under the file's lock (the file is re-read inside the lock,
  so no worker's update is lost), and hands its results to the controller in
  ``workeroutput`` at session finish;
* the **controller** collects them in ``pytest_testnodedown``, so its terminal summary,
  reports and exit status cover every worker.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Mapping

import pytest

#: key of this plugin's payload in xdist's ``workeroutput``
OUTPUT_KEY = "llmcycle"


# ----------------------------------------------------------------------------- GPU pinning


def worker_device(spec: str, worker_index: int, device_count: int) -> str:
    """The device worker ``worker_index`` times on under ``--llmcycle-xdist-gpus``.

    Worker k gets GPU ``k % device_count``, so with as many workers as GPUs every GPU times
    side by side. Only ``cuda`` and ``auto`` are spread; ``cuda:N``, ``cpu`` and ``mps`` stay as
    given, and so does everything on a machine without CUDA devices.
    """
    if spec in ("cuda", "auto") and device_count > 0:
        return f"cuda:{worker_index % device_count}"
    return spec


def cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pin_worker_device(spec: str, worker_index: int) -> str:
    """:func:`worker_device` for this machine; also makes it torch's current CUDA device, so
    test code that says ``"cuda"`` lands on the same GPU as ``llmcycle.device``."""
    pinned = worker_device(spec, worker_index, cuda_device_count())
    if pinned != spec:
        import torch

        torch.cuda.set_device(pinned)
    return pinned


def worker_of(config: pytest.Config) -> tuple[int | None, int]:
    """(this worker's number, the number of workers): ``gw3`` of 4 -> (3, 4); (None, 1) elsewhere."""
    info = getattr(config, "workerinput", None)
    if info is None:
        return None, 1
    digits = "".join(c for c in str(info.get("workerid", "")) if c.isdigit())
    return (int(digits) if digits else 0), int(info.get("workercount", 1))


def register(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        config.pluginmanager.register(WorkerHooks(config), "llmcycle-xdist-worker")
    elif getattr(config.option, "dist", "no") != "no":
        config.pluginmanager.register(ControllerHooks(config), "llmcycle-xdist-controller")


# ----------------------------------------------------------------------------- worker -> controller


def _plain(o: Any) -> Any:
    """JSON for what a test may put in counters or env (numpy/torch scalars, sets, mappings)."""
    item = getattr(o, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Mapping):
        return dict(o)
    return str(o)


def dump_run(run: Any) -> str:
    """A worker's results as JSON text: execnet carries it whatever a test put in counters."""
    results = []
    for r in run.results:
        d = r.to_dict()
        if r.baseline is not None:
            d["baseline"] = asdict(r.baseline)
        results.append(d)
    payload = {
        "results": results,
        "written": list(run.written),
        "written_files": list(run.written_files),
        "write_error": getattr(run, "write_error", None),
        "device": run._device,
        "device_key": run._device_key,
    }
    return json.dumps(payload, default=_plain)


def load_into(run: Any, text: str, worker: str = "") -> None:
    """Add one worker's payload (from :func:`dump_run`) to the controller's RunState."""
    from .results import StageResult

    data = json.loads(text)
    run.results.extend(StageResult.from_dict(d) for d in data.get("results", ()))
    run.results.sort(key=lambda r: r.nodeid)  # stable: one order whichever worker finished first
    run.written.extend(data.get("written", ()))
    run.written_files.extend(data.get("written_files", ()))
    if data.get("write_error"):
        mine = getattr(run, "write_error", None)
        err = f"{worker}: {data['write_error']}" if worker else data["write_error"]
        run.write_error = f"{mine}; {err}" if mine else err
    if data.get("device") and run._device is None:
        run._device = data["device"]
    if data.get("device_key"):
        keys = set(filter(None, (run._device_key or "").split(", "))) | {data["device_key"]}
        run._device_key = ", ".join(sorted(keys))


class WorkerHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)  # after plugin.py's pytest_sessionfinish wrote the updates
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from ..plugin import RUN_KEY

        run = self.config.stash.get(RUN_KEY, None)
        if run is not None:
            self.config.workeroutput[OUTPUT_KEY] = dump_run(run)  # type: ignore[attr-defined]


class ControllerHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        text = getattr(node, "workeroutput", {}).get(OUTPUT_KEY)
        if not text:  # a worker without timing tests, or one that crashed
            return
        from ..plugin import get_run

        worker = str(getattr(node, "gateway", None) and node.gateway.id or "")
        load_into(get_run(self.config), text, worker)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from ..plugin import RUN_KEY

        run = self.config.stash.get(RUN_KEY, None)
        if run is not None and getattr(run, "write_error", None):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
