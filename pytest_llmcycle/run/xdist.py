"""pytest-xdist support: workers take turns on a device, and the controller shows one
summary and writes one report for the whole run.

Registered by ``plugin.py`` only when xdist is active, split by role as xdist itself is:

* a **worker** times its tests (taking turns with the other workers through the device's
  timing lock, ``measure.lock``), merges its own ``--llmcycle-update`` entries into the
  baseline file under the file's lock (the file is re-read inside the lock, so no worker's
  update is lost), and hands its run to the controller in ``workeroutput`` at session finish;
* the **controller** collects them in ``pytest_testnodedown``, so its terminal summary,
  reports and exit status cover every worker.

Which GPU a worker times on (``--llmcycle-xdist-gpus``) is decided with the device, in
``measure.device``. This module talks to the run only through ``RunState``'s
``to_worker_output`` and ``absorb_worker_output`` and reaches it through ``keys``.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

import pytest

from .keys import RUN_KEY, get_run

if TYPE_CHECKING:  # the plugin imports this module in every run with xdist; session loads numpy
    from .session import RunState

#: key of this plugin's payload in xdist's ``workeroutput``
OUTPUT_KEY = "llmcycle"


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


def dump_run(run: RunState) -> str:
    """A worker's run as JSON text: execnet carries it whatever a test put in counters."""
    return json.dumps(run.to_worker_output(), default=_plain)


def load_into(run: RunState, text: str, worker: str = "") -> None:
    """Add one worker's payload (from :func:`dump_run`) to the controller's run."""
    run.absorb_worker_output(json.loads(text), worker)


class WorkerHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)  # after plugin.py's pytest_sessionfinish wrote the updates
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
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
        worker = str(getattr(node, "gateway", None) and node.gateway.id or "")
        load_into(get_run(self.config), text, worker)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        run = self.config.stash.get(RUN_KEY, None)
        if run is not None and run.write_error:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
