"""The device timing lock: timed sections on one device take turns, whichever process runs them
(xdist workers, parallel pytest runs of this user on this machine), wherever their baseline
files are. One lock file per device and user, in the temp folder.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from filelock import FileLock, Timeout


class LockWaitTimeout(RuntimeError):
    """Waited too long for another process's timed section on the same device."""


def timing_lock_path(device: str) -> str:
    """The lock file of ``device`` (and this user) in the temp folder."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
    return os.path.join(tempfile.gettempdir(), f"pytest-llmcycle-timing-{uid}-{safe}.lock")


class DeviceTimingLock:
    """Held around a timed section: ``with lock: ...``.

    Reentrant within a process. The OS releases it when a holder dies, so a killed worker
    never leaves it held. ``wait_s`` is how long to wait for another holder (None: for ever);
    past it, :class:`LockWaitTimeout`.
    """

    def __init__(self, device: str, wait_s: float | None) -> None:
        self.device = device
        self.wait_s = wait_s
        self.path = timing_lock_path(device)
        self._lock = FileLock(self.path, is_singleton=True)

    def __enter__(self) -> None:
        try:
            self._lock.acquire(timeout=-1 if self.wait_s is None else self.wait_s)
        except Timeout:
            raise LockWaitTimeout(
                f"llmcycle: waited {self.wait_s:.0f} s for the timing lock of device {self.device} ({self.path}), "
                "held by another pytest-llmcycle process on this machine; a stuck run? "
                "Stop it, or raise --llmcycle-stage-timeout"
            ) from None

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()
