"""Settings, resolved once, and their precedence: marker > command line > ini > default.

Pure Python (no torch, numpy or pytest imports at module level) so the plugin imports cheaply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

DEFAULT_BASELINE = ".llmcycle/baselines.json"


class SettingError(ValueError):
    """A setting with a bad value; the message names the option and a valid value."""


@dataclass(frozen=True)
class Settings:
    threshold: float = 0.10
    alpha: float = 0.01
    budget_s: float = 1.0
    min_rounds: int = 10
    max_rounds: int = 10_000
    warmup_rounds: int = 2
    precision: float = 0.005
    device: str = "auto"
    device_key: str | None = None
    threads: int | None = None  # None: half the cores, resolved when a test first times something
    baseline: str = DEFAULT_BASELINE
    strict: bool = False
    update: bool = False
    update_all: bool = False
    #: add this run to each baseline as one more recording process (implies update_all)
    update_append: bool = False
    remeasure: bool = True
    machine_check: bool = True
    #: deterministic counters (FLOPs, aten ops, bytes) next to time, for the LLM helpers
    counters: bool = True

    def timing_policy(self):
        from .measure.timing import TimingPolicy

        return TimingPolicy(
            budget_s=self.budget_s,
            min_rounds=self.min_rounds,
            max_rounds=self.max_rounds,
            warmup_rounds=self.warmup_rounds,
            precision=self.precision,
        )


#: name -> (parser, check, what a valid value is); used for ini, command line and marker alike.
def _positive(x: float) -> bool:
    return x > 0


def _prob(x: float) -> bool:
    return 0 < x < 1


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(v)


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(v)
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(v)
    return int(v)


def _valid_baseline_path(x: str) -> bool:
    """Non-empty; the only placeholder is ``{module}`` (any other brace is a typo)."""
    return bool(x.strip()) and not re.search(r"[{}]", x.replace("{module}", ""))


_SPEC: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
    "threshold": (_float, _positive, "a fraction > 0, e.g. 0.10 for 10%"),
    "alpha": (_float, _prob, "a probability between 0 and 1, e.g. 0.01"),
    "budget_s": (_float, _positive, "seconds > 0, e.g. 1.0"),
    "min_rounds": (_int, lambda x: x >= 3, "an integer >= 3"),
    "max_rounds": (_int, lambda x: x >= 3, "an integer >= 3"),
    "warmup_rounds": (_int, lambda x: x >= 0, "an integer >= 0"),
    "precision": (_float, _positive, "a fraction > 0, e.g. 0.005"),
    "threads": (_int, lambda x: x >= 1, "an integer >= 1"),
    "device": (str, lambda x: True, "auto, cpu, cuda, cuda:N or mps"),
    "device_key": (str, lambda x: bool(x.strip()), "a non-empty name"),
    "baseline": (str, _valid_baseline_path, "a file path, optionally with {module} for one file per test module"),
    "strict": (_parse_bool, lambda x: True, "true or false"),
    "update": (_parse_bool, lambda x: True, "true or false"),
    "update_all": (_parse_bool, lambda x: True, "true or false"),
    "update_append": (_parse_bool, lambda x: True, "true or false"),
    "remeasure": (_parse_bool, lambda x: True, "true or false"),
    "machine_check": (_parse_bool, lambda x: True, "true or false"),
    "counters": (_parse_bool, lambda x: True, "true or false"),
}

#: what @pytest.mark.llmcycle(...) accepts; "budget" is the marker's spelling of budget_s
MARKER_ARGS = ("threshold", "alpha", "budget", "min_rounds", "max_rounds", "warmup_rounds", "precision", "remeasure", "counters")


def convert(name: str, value: Any, where: str) -> Any:
    parse, check, valid = _SPEC[name]
    try:
        v = parse(value)
    except (TypeError, ValueError):
        raise SettingError(f"{where}={value!r} is not valid: expected {valid}") from None
    if not check(v):
        raise SettingError(f"{where}={value!r} is not valid: expected {valid}")
    return v


def cli_flag(name: str) -> str:
    return "--llmcycle-" + (name[:-2] if name.endswith("_s") else name).replace("_", "-")


def resolve(cli: Mapping[str, Any], ini: Mapping[str, Any]) -> Settings:
    """Global settings: command line beats ini beats default. ``None``/"" means not given."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.name
        if cli.get(name) not in (None, ""):
            values[name] = convert(name, cli[name], cli_flag(name))
        elif ini.get(name) not in (None, ""):
            values[name] = convert(name, ini[name], f"ini option {cli_flag(name)[2:].replace('-', '_')}")
    s = Settings(**values)
    from .measure.device import is_valid_device

    if not is_valid_device(s.device):
        raise SettingError(f"--llmcycle-device={s.device!r} is not valid: expected auto, cpu, cuda, cuda:N or mps")
    if s.min_rounds > s.max_rounds:
        raise SettingError(f"llmcycle min_rounds={s.min_rounds} exceeds max_rounds={s.max_rounds}")
    return s


def for_marker(settings: Settings, kwargs: Mapping[str, Any], where: str) -> Settings:
    """Apply ``@pytest.mark.llmcycle(**kwargs)`` on top of the global settings."""
    unknown = sorted(set(kwargs) - set(MARKER_ARGS))
    if unknown:
        raise SettingError(
            f"{where}: unknown @pytest.mark.llmcycle argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(MARKER_ARGS)}"
        )
    changes = {}
    for k, v in kwargs.items():
        name = "budget_s" if k == "budget" else k
        changes[name] = convert(name, v, f"{where}: @pytest.mark.llmcycle argument {k}")
    s = replace(settings, **changes)
    if s.min_rounds > s.max_rounds:
        raise SettingError(f"{where}: llmcycle min_rounds={s.min_rounds} exceeds max_rounds={s.max_rounds}")
    return s
