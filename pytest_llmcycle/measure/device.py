"""Which device a test times on, what it is called, and how to wait for it.

Everything touching torch imports it inside the function: this module is imported by the
plugin in every pytest run, including runs with no timing tests and no torch installed.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import sys
from typing import Any, Callable

VALID_DEVICES = ("auto", "cpu", "cuda", "mps")


def is_valid_device(spec: str) -> bool:
    return spec in VALID_DEVICES or re.fullmatch(r"cuda:\d+", spec) is not None


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(spec: str) -> str:
    """Canonical device string for ``spec`` ("auto" picks CUDA, else MPS, else CPU).

    Raises ``ValueError`` with a user-facing reason when the device is not usable here.
    """
    if spec == "cpu":
        return "cpu"
    if not torch_available():
        if spec == "auto":
            return "cpu"
        raise ValueError(f"device {spec!r} needs torch, which is not installed")
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        if _mps_available():
            return "mps"
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but torch.cuda.is_available() is False")
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return f"cuda:{index}"
    if spec == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' requested but torch.backends.mps.is_available() is False")
        return "mps"
    raise ValueError(f"unknown device {spec!r}; use one of auto, cpu, cuda, cuda:N, mps")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def worker_device(spec: str, worker_index: int, device_count: int) -> str:
    """The device xdist worker ``worker_index`` times on under ``--llmcycle-xdist-gpus``.

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


def device_kind(device: str) -> str:
    return device.split(":")[0]


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name; read once a process (every stage's environment records it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess

            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: str) -> str:
    kind = device_kind(device)
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if kind == "mps":
        return f"Apple {cpu_model()}"
    return cpu_model()


def slug(text: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)|cpu @.*$", "", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown"


#: words of a CPU model name that say nothing about its class
_FILLER = {"processor", "cpu", "with", "radeon", "graphics", "apu", "mobile", "gen"}


def cpu_family(model: str) -> str:
    """Vendor and family of a CPU model name, as a slug: the words before its first model number.

    ``AMD EPYC 7763 64-Core Processor`` and a VM's ``AMD EPYC`` are both ``amd-epyc``;
    ``Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz`` is ``intel-xeon-platinum``. A short tier
    word right after the family stays (``intel-core-i7``, ``apple-m2``): a different class.
    Filler words (``processor``, ``cpu``, ``gen``, ...), numbers before the vendor and a
    parenthesised code name are dropped.
    """
    words = slug(re.sub(r"\([^)]*\)", " ", model.replace("(R)", "").replace("(TM)", "")
                        .replace("(r)", "").replace("(tm)", ""))).split("-")
    out: list[str] = []
    for w in words:
        if any(c.isdigit() for c in w):
            if not out:  # "13th Gen Intel ...": a leading generation is no model number
                continue
            if re.fullmatch(r"[a-z]\d{1,2}", w):
                out.append(w)
            break
        if w not in _FILLER and w != "unknown":
            out.append(w)
    return "-".join(out) or slug(model)


#: the placeholders a device key may hold (``--llmcycle-device-key``, ``llmcycle_device_key``)
KEY_PLACEHOLDERS = ("kind", "family", "model")


def key_parts(device: str) -> dict[str, str]:
    """What the placeholders of a device key stand for on ``device`` here: ``kind`` (cpu, cuda,
    mps), ``model`` (the full model name as a slug) and ``family`` (:func:`cpu_family` of a
    CPU; a GPU's full name: its name is its class)."""
    kind = device_kind(device)
    model = slug(device_name(device))
    family = cpu_family(device_name(device)) if kind == "cpu" else model
    return {"kind": kind, "family": family, "model": model}


#: the key a device is stored under by default: ``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``
DEFAULT_KEY = "{kind}-{family}"


def expand_device_key(template: str, device: str) -> str:
    """``template`` with ``{kind}``, ``{family}`` and ``{model}`` replaced for ``device``.

    Raises ValueError naming the placeholder when the template holds another brace.
    """
    if "{" not in template and "}" not in template:
        return template
    unknown = [p for p in re.findall(r"\{([^{}]*)\}", template) if p not in KEY_PLACEHOLDERS]
    stray = re.sub(r"\{[^{}]*\}", "", template)
    if unknown or "{" in stray or "}" in stray:
        bad = f"{{{unknown[0]}}}" if unknown else "a stray brace"
        raise ValueError(
            f"device key {template!r} holds {bad}: the placeholders are {{kind}}, {{family}} and {{model}}, "
            "e.g. --llmcycle-device-key 'cpu-{model}' for the full CPU model"
        )
    parts = key_parts(device)
    return re.sub(r"\{(\w+)\}", lambda m: parts[m.group(1)], template)


def default_device_key(device: str) -> str:
    """``cpu-<vendor and family>`` or ``cuda-<gpu name>``: the runners of one class share a key.

    A CPU is keyed by family, not its full model name, so a fleet whose VMs report ``AMD EPYC``
    or ``AMD EPYC 7763 64-Core Processor`` shares ``cpu-amd-epyc``; the full model is
    ``--llmcycle-device-key 'cpu-{model}'`` (see :func:`expand_device_key`). Timing is still
    judged per entry: the thread count and library versions are checked with each entry, so a
    changed environment reads as "not comparable" rather than as "new", and a faster or slower
    member of the family shows in the machine factor.
    """
    return expand_device_key(DEFAULT_KEY, device)


def default_threads() -> int:
    """Half the visible cores, at least one: leaves a core for the OS and the test runner."""
    try:
        n = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n // 2)


def synchronizer(device: str) -> Callable[[], None]:
    """A callable that blocks until all queued work on ``device`` has finished."""
    kind = device_kind(device)
    if kind == "cuda":
        import torch

        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    if kind == "mps":
        import torch

        return torch.mps.synchronize
    return _no_sync


def _no_sync() -> None:
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose upgrades move latency; only those already imported.

    Reading ``sys.modules`` (not importing) keeps a pure-Python stage free of torch.
    """
    out: dict[str, str] = {}
    for name in ("torch", "transformers"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def dtype_of(fn: Any) -> str | None:
    """The parameter dtype of a module (or a bound method of one), else None."""
    target = getattr(fn, "__self__", fn)
    params = getattr(target, "parameters", None)
    if callable(params):
        try:
            first = next(iter(params()))
        except (StopIteration, TypeError):
            return None
        return str(first.dtype).replace("torch.", "")
    return None
