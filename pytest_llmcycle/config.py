"""Every option of pytest-llmcycle in one table, and the two records they resolve into.

:data:`OPTIONS` is the one place an option is declared: its setting name, command-line flag,
ini name, converter and check, default, help text, and whether ``@pytest.mark.llmcycle``
takes it (under which spelling). ``plugin.py`` registers flags and ini names from it and
resolves them once at configure time; ``cli.py`` checks ``llmcycle compare --threshold`` and
``--alpha`` with the same converters (:func:`convert`).

Precedence: **marker > command line > ini > default**. A source that does not give a value
(``None`` or an empty string) falls through to the next one. A bad value is an error that names
where it came from (the flag, the ini option, or the test and its marker argument); a bad ini
value that the command line overrides is never read. Bad command-line and ini values stop the
session (the plugin raises ``pytest.UsageError``); a bad marker fails its own test only.

What a marker can change per test lives in :class:`Settings`, one frozen record per test; what
belongs to the whole run (test selection, outputs, the stage time limit, xdist GPUs) in
:class:`RunOptions`. :func:`check_output_paths` refuses outputs aimed at the baseline files.

Pure Python (no torch, numpy or pytest imports) so the plugin imports cheaply.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .engine.counts import DEFAULT_POLICY, EXAMPLE as COUNTERS_EXAMPLE, CounterPolicy, parse_policy
from .measure.device import is_valid_device
from .reports.outputs import FORMATS, report_format

DEFAULT_BASELINE = ".llmcycle/baselines.json"
#: the largest time budget of one stage's measurement: ten minutes of timing one stage is
#: already a lot, and a larger number is far more often milliseconds given as seconds
MAX_BUDGET_S = 600.0


class SettingError(ValueError):
    """A bad option value; the message names where it came from and a valid value."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        #: what is wrong and the fix, without where the value came from (for other front ends)
        self.reason = reason or message


# ----------------------------------------------------------------------------- converters


def _bool(v: Any) -> bool:
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


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(v)
    return v


# ----------------------------------------------------------------------------- checks and hints


def _any(x: Any) -> bool:
    return True


def _baseline_path(x: str) -> bool:
    """Non-empty; the only placeholder is ``{module}`` (any other brace is a typo)."""
    return bool(x.strip()) and not re.search(r"[{}]", x.replace("{module}", ""))


def _as_fraction(x: float) -> str:
    """10 -> "0.10": what a number given in percent reads as a fraction."""
    return f"{x / 100:.2f}" if float(x).is_integer() else f"{x / 100:g}"


def _threshold_hint(x: float) -> str | None:
    if 1 <= x < 100:
        return f"a threshold is a fraction; did you mean {_as_fraction(x)}?"
    return None


def _alpha_hint(x: float) -> str | None:
    if 0.5 < x < 1:  # a confidence level given where the significance level goes
        return (f"expected a probability > 0 and at most 0.5: alpha is the significance level, "
                f"so {x:g} confidence is alpha={1 - x:.2g}")
    return None


def _budget_hint(x: float) -> str | None:
    if MAX_BUDGET_S < x < math.inf:
        return (f"the budget is seconds per stage, at most {MAX_BUDGET_S:g}; "
                f"did you mean {x / 1000:g} ({x:g} milliseconds)?")
    return None


def _report_hint(x: str) -> str:
    suffix = Path(x).suffix
    return (f"unknown report format {suffix or '(no extension)'!r}; "
            f"end the file name with one of {', '.join(sorted(FORMATS))}")


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option: where it can be given, how its text becomes a value, and what is valid."""

    name: str  # field of Settings or RunOptions
    help: str  # argparse text: a literal % is written %%
    parse: Callable[[Any], Any]  # text (or a marker's Python value) -> value; raises ValueError
    check: Callable[[Any], bool]  # is the parsed value valid
    expected: str  # what a valid value is, for the error message
    default: Any = None
    flag: str | None = None  # command line; None: not on the command line
    ini: str | None = None  # ini name; None: no ini option
    metavar: str | None = None  # with a flag: the flag takes a value; without one it is a switch
    ini_type: str | None = None  # how pytest reads the ini value: None (text), "bool" or "args"
    many: bool = False  # a repeatable flag / a list in ini; each item is parsed and checked
    marker: str | None = None  # the @pytest.mark.llmcycle spelling; None: the marker does not take it
    path: bool = False  # a file: from the command line relative to the working folder, from ini to the rootdir
    hint: Callable[[Any], str | None] = lambda x: None  # a better reason for a likely mistake
    message: str = "{where}={value!r} is not valid: {reason}"

    @property
    def dest(self) -> str:
        """The attribute of pytest's parsed options: ``config.getoption(opt.dest)``."""
        return "llmcycle_" + self.name

    @property
    def ini_help(self) -> str:
        """The help text as ``pytest --help`` shows it for the ini option (not through argparse)."""
        return self.help.replace("%%", "%") + ("; in ini: relative to the rootdir" if self.path else "")


_BOOL = dict(parse=_bool, check=_any, expected="true or false")


class _Invalid:
    """A value whose parser had a better reason than the option's 'expected ...' (shown as the hint)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _counter_policy(v: Any) -> Any:
    try:
        return parse_policy(v)
    except ValueError as e:
        return _Invalid(str(e))

OPTIONS: tuple[Option, ...] = (
    # ---- Settings: one record per test; the marker may change those with a marker spelling
    Option("baseline", "baseline JSON file, relative to the rootdir; {module} in it: one file per test module "
           "(default: .llmcycle/baselines.json)", _str, _baseline_path,
           "a file path, optionally with {module} for one file per test module", DEFAULT_BASELINE,
           flag="--llmcycle-baseline", ini="llmcycle_baseline", metavar="PATH"),
    Option("threshold", "slowdown that fails a stage, as a fraction (default: 0.10 = 10%%)", _float,
           lambda x: 0 < x < 1, "a fraction > 0 and < 1, e.g. 0.10 for 10%", 0.10,
           flag="--llmcycle-threshold", ini="llmcycle_threshold", metavar="FRACTION", marker="threshold",
           hint=_threshold_hint),
    Option("alpha", "significance level of the regression test, at most 0.5 (default: 0.01)", _float,
           lambda x: 0 < x <= 0.5, "a probability > 0 and at most 0.5, e.g. 0.01", 0.01,
           flag="--llmcycle-alpha", ini="llmcycle_alpha", metavar="P", marker="alpha", hint=_alpha_hint),
    Option("budget_s", f"time budget per stage measurement in seconds, at most {MAX_BUDGET_S:g} (default: 1.0)",
           _float, lambda x: 0 < x <= MAX_BUDGET_S, f"seconds > 0 and at most {MAX_BUDGET_S:g}, e.g. 1.0", 1.0,
           flag="--llmcycle-budget", ini="llmcycle_budget", metavar="SECONDS", marker="budget", hint=_budget_hint),
    Option("min_rounds", "fewest timed rounds per stage, even past the budget (default: 10)", _int,
           lambda x: x >= 3, "an integer >= 3", 10,
           flag="--llmcycle-min-rounds", ini="llmcycle_min_rounds", metavar="N", marker="min_rounds"),
    Option("max_rounds", "most timed rounds per stage", _int, lambda x: x >= 3, "an integer >= 3", 10_000,
           marker="max_rounds"),
    Option("warmup_rounds", "untimed rounds before timing a stage", _int, lambda x: x >= 0, "an integer >= 0", 2,
           marker="warmup_rounds"),
    Option("precision", "stop timing a stage once the median is known this closely, as a fraction", _float,
           lambda x: 0 < x < 1, "a fraction > 0 and < 1, e.g. 0.005", 0.005, marker="precision"),
    Option("device", "device to time on: auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, else MPS, else CPU)",
           _str, is_valid_device, "auto, cpu, cuda, cuda:N or mps", "auto",
           flag="--llmcycle-device", ini="llmcycle_device", metavar="DEVICE"),
    Option("device_key", "name baselines are stored under, e.g. one name for a fleet of identical CI runners "
           "(default: {kind}-{family}, e.g. cpu-amd-epyc; {model}: the full model name)", _str, lambda x: bool(x.strip()) and x.isprintable(),
           "a non-empty name without control characters", None,
           flag="--llmcycle-device-key", ini="llmcycle_device_key", metavar="KEY"),
    Option("threads", "torch CPU threads while timing (default: half the cores)", _int, lambda x: x >= 1,
           "an integer >= 1", None,  # None: half the cores, resolved when a test first times something
           flag="--llmcycle-threads", ini="llmcycle_threads", metavar="N"),
    Option("update", "record baselines for new and changed stages (unchanged entries stay as they are)",
           default=False, flag="--llmcycle-update", **_BOOL),
    Option("update_all", "re-record every measured stage's baseline", default=False,
           flag="--llmcycle-update-all", **_BOOL),
    Option("update_append", "add this run to every measured stage's baseline as one more recording process; run "
           "it in a few processes and the verdicts allow for how far their medians differ",  # implies update_all
           default=False, flag="--llmcycle-update-append", **_BOOL),
    Option("update_force", "record even when the machine reads more than 35%% off the speed its stored reference "
           "was timed at (implies --llmcycle-update; without it such a test's stages are not written)",
           default=False, flag="--llmcycle-update-force", **_BOOL),
    Option("disable", "smoke mode: run each timed function once, untimed, so the tests' assertions still run; "
           "nothing is judged, no baseline is read or written (excludes --llmcycle-update)", default=False,
           flag="--llmcycle-disable", ini="llmcycle_disable", ini_type="bool", **_BOOL),
    Option("strict", "fail stages that have no usable baseline", default=False,
           flag="--llmcycle-strict", ini="llmcycle_strict", ini_type="bool", **_BOOL),
    Option("strict_all", "fail every stage that was not judged: new, not comparable and inconclusive (implies "
           "--llmcycle-strict)", default=False,
           flag="--llmcycle-strict-all", ini="llmcycle_strict_all", ini_type="bool", **_BOOL),
    Option("remeasure", "re-measure a stage that looks regressed before failing it (default: true)", default=True,
           ini="llmcycle_remeasure", marker="remeasure", **_BOOL),
    Option("machine_check", "time a reference workload when a stage looks slower, to tell a slower machine from "
           "slower code (default: true)", default=True, ini="llmcycle_machine_check", **_BOOL),
    Option("early_stop", "stop a stage's rounds once its verdict can no longer change; false: until the precision "
           "or the budget (default: true)", default=True, ini="llmcycle_early_stop", marker="early_stop", **_BOOL),
    #: deterministic counters (FLOPs, aten ops, bytes) next to time, for the LLM helpers
    Option("counters", "which deterministic counters (flops, aten_ops, alloc_bytes, peak_bytes; LLM helpers) gate "
           "and how tightly: true (the defaults: flops:0, aten_ops:0, alloc_bytes:1%%, peak_bytes:2%%), false (none "
           "counted), or e.g. 'flops:0, alloc_bytes:5%%, aten_ops:off' (counters not named keep their default)",
           _counter_policy, lambda x: not isinstance(x, _Invalid), f"true, false or a text like {COUNTERS_EXAMPLE!r}",
           DEFAULT_POLICY, flag="--llmcycle-counters", ini="llmcycle_counters", metavar="POLICY", marker="counters",
           hint=lambda x: x.reason),
    # ---- RunOptions: the whole run
    Option("skip", "deselect timing tests (tests using llmcycle)", default=False, flag="--llmcycle-skip", **_BOOL),
    Option("only", "run only timing tests", default=False, flag="--llmcycle-only", **_BOOL),
    Option("report", "write a report of every stage; format by extension: .md (pull-request comment), .json "
           "(tools, llmcycle compare), .html (self-contained, with plots). Repeat for several", _str,
           lambda x: report_format(x) is not None, "a file name ending in " + ", ".join(sorted(FORMATS)), (),
           flag="--llmcycle-report", ini="llmcycle_report", metavar="PATH", ini_type="args", many=True,
           path=True, hint=_report_hint, message="{where} {value}: {reason}"),
    Option("history", "append each run's stage medians to this SQLite file; the HTML report and `llmcycle "
           "history` show the trend", _str, lambda x: bool(x.strip()), "a file path", None,
           flag="--llmcycle-history", ini="llmcycle_history", metavar="PATH", path=True),
    Option("tensorboard", "also export stage medians as TensorBoard scalars (needs the tensorboard package)", _str,
           lambda x: bool(x.strip()), "a folder path", None,
           flag="--llmcycle-tensorboard", ini="llmcycle_tensorboard", metavar="LOGDIR", path=True),
    Option("wandb", "also export stage medians as a Weights & Biases run in this project: offline (under "
           "WANDB_DIR, uploaded by `wandb sync`) unless WANDB_MODE says otherwise; needs the wandb package", _str,
           lambda x: bool(x.strip()) and x.isprintable(), "a W&B project name", None,
           flag="--llmcycle-wandb", ini="llmcycle_wandb", metavar="PROJECT"),
    Option("step_summary", "append the Markdown report to $GITHUB_STEP_SUMMARY when it is set (default: true)",
           default=True, ini="llmcycle_step_summary", ini_type="bool", **_BOOL),
    Option("report_samples", "the JSON report writes every sample, the baselines' too (default: a baseline's "
           "samples only where the baseline file no longer holds them)", default=False,
           flag="--llmcycle-report-samples", ini="llmcycle_report_samples", ini_type="bool", **_BOOL),
    Option("stage_timeout_s", "hard limit in seconds of one measurement of a stage; a stage past it is stopped at "
           "its next call and fails (default: 300 or 60x the stage's budget, whichever is larger; 0: no limit)",
           _float, lambda x: math.isfinite(x) and x >= 0, "seconds >= 0 (0: no limit), e.g. 300",
           None,  # None: the default rule above, applied per stage by RunState.stage_limit_s
           flag="--llmcycle-stage-timeout", ini="llmcycle_stage_timeout", metavar="SECONDS"),
    Option("xdist_gpus", "with pytest-xdist: worker k times on GPU k mod the GPU count when the device is cuda or "
           "auto", default=False, flag="--llmcycle-xdist-gpus", ini="llmcycle_xdist_gpus", ini_type="bool", **_BOOL),
    # ---- base against head (run.against): the base runs beside this checkout, taking turns
    Option("against", "judge against a base instead of the baseline file: a git revision (e.g. origin/main) or a "
           "checkout of the base; its timed tests run beside these in other pytest processes, round by round",
           _str, lambda x: bool(x.strip()), "a git revision or a folder, e.g. origin/main", None,
           flag="--llmcycle-against", metavar="REV_OR_PATH"),
    Option("against_python", "with --llmcycle-against: the Python that runs the base (e.g. a virtual environment "
           "with the previous torch), which needs pytest-llmcycle installed; default: this one", _str,
           lambda x: bool(x.strip()), "a Python executable, e.g. ../old-venv/bin/python", None,
           flag="--llmcycle-against-python", metavar="PYTHON", path=True),
    Option("against_pairs", "with --llmcycle-against: base/head process pairs that time each stage (default: 2)",
           _int, lambda x: 1 <= x <= 8, "an integer from 1 to 8", 2,
           flag="--llmcycle-against-pairs", ini="llmcycle_against_pairs", metavar="N"),
    Option("against_paths", "with --llmcycle-against: more folders (relative to the repository root) whose code "
           "the base imports from its own checkout, besides the root and src/", _str, lambda x: bool(x.strip()),
           "folders relative to the repository root, e.g. lib", (), ini="llmcycle_against_paths", ini_type="args",
           many=True),
)

OPTION: dict[str, Option] = {o.name: o for o in OPTIONS}

#: what @pytest.mark.llmcycle(...) accepts; "budget" is the marker's spelling of budget_s
MARKER_ARGS: tuple[str, ...] = tuple(o.marker for o in OPTIONS if o.marker)
_MARKER_SETTING = {o.marker: o.name for o in OPTIONS if o.marker}


def _default(name: str) -> Any:
    return OPTION[name].default


# ----------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class Settings:
    """How one test is timed and judged. Defaults come from :data:`OPTIONS`."""

    threshold: float = _default("threshold")
    alpha: float = _default("alpha")
    budget_s: float = _default("budget_s")
    min_rounds: int = _default("min_rounds")
    max_rounds: int = _default("max_rounds")
    warmup_rounds: int = _default("warmup_rounds")
    precision: float = _default("precision")
    device: str = _default("device")
    device_key: str | None = _default("device_key")
    threads: int | None = _default("threads")
    baseline: str = _default("baseline")
    strict: bool = _default("strict")
    #: also fail inconclusive stages (implies strict)
    strict_all: bool = _default("strict_all")
    update: bool = _default("update")
    update_all: bool = _default("update_all")
    #: add this run to each baseline as one more recording process (implies update_all)
    update_append: bool = _default("update_append")
    #: store a recording even when the machine reads far off its stored reference speed (implies update)
    update_force: bool = _default("update_force")
    remeasure: bool = _default("remeasure")
    machine_check: bool = _default("machine_check")
    early_stop: bool = _default("early_stop")
    #: deterministic counters (FLOPs, ops, bytes) next to time, for the LLM helpers: which gate and
    #: how tightly (a CounterPolicy; false when none is on, and then none is taken)
    counters: CounterPolicy = _default("counters")
    #: smoke mode (--llmcycle-disable): every timed callable runs once, untimed and unjudged
    disable: bool = _default("disable")

    def timing_policy(self):
        from .measure.timing import TimingPolicy

        return TimingPolicy(
            budget_s=self.budget_s,
            min_rounds=self.min_rounds,
            max_rounds=self.max_rounds,
            warmup_rounds=self.warmup_rounds,
            precision=self.precision,
            once=self.disable,
        )


@dataclass(frozen=True)
class RunOptions:
    """Options of the whole run, which no marker changes. Paths are absolute."""

    skip: bool = _default("skip")
    only: bool = _default("only")
    report: tuple[Path, ...] = _default("report")
    history: Path | None = _default("history")
    tensorboard: Path | None = _default("tensorboard")
    wandb: str | None = _default("wandb")
    step_summary: bool = _default("step_summary")
    #: the JSON report writes every sample (default: lean, see reports.jsondoc)
    report_samples: bool = _default("report_samples")
    #: None: max(300 s, 60x the budget) per stage; 0: no limit
    stage_timeout_s: float | None = _default("stage_timeout_s")
    xdist_gpus: bool = _default("xdist_gpus")
    #: --llmcycle-against: the base (a git revision or a folder), its Python, process pairs, import roots
    against: str | None = _default("against")
    against_python: Path | None = _default("against_python")
    against_pairs: int = _default("against_pairs")
    against_paths: tuple[str, ...] = _default("against_paths")


# ----------------------------------------------------------------------------- resolving


def cli_flag(name: str) -> str:
    """The command-line spelling of setting ``name`` (also used in messages when it has no flag)."""
    flag = OPTION[name].flag if name in OPTION else None
    return flag or "--llmcycle-" + (name[:-2] if name.endswith("_s") else name).replace("_", "-")


def ini_name(name: str) -> str:
    """The ini spelling of setting ``name``: the flag without dashes, e.g. llmcycle_budget."""
    ini = OPTION[name].ini if name in OPTION else None
    return ini or cli_flag(name)[2:].replace("-", "_")


def convert(name: str, value: Any, where: str) -> Any:
    """Parse and check ``value`` of option ``name``; ``where`` says where it came from."""
    opt = OPTION[name]
    if opt.many:
        items = [value] if isinstance(value, str) else list(value)
        return tuple(_convert_one(opt, v, where) for v in items)
    return _convert_one(opt, value, where)


def _convert_one(opt: Option, value: Any, where: str) -> Any:
    try:
        v = opt.parse(value)
    except (TypeError, ValueError):
        reason = f"expected {opt.expected}"
    else:
        if opt.check(v):
            return v
        reason = opt.hint(v) or f"expected {opt.expected}"
    raise SettingError(opt.message.format(where=where, value=value, reason=reason), reason)


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)


def pick(name: str, cli: Mapping[str, Any], ini: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Option ``name``'s value, command line before ini before default, and its source:
    "cli", "ini", or None for the default."""
    if _given(cli.get(name)):
        return convert(name, cli[name], cli_flag(name)), "cli"
    if _given(ini.get(name)):
        return convert(name, ini[name], f"ini option {ini_name(name)}"), "ini"
    return _default(name), None


def _check_rounds(s: Settings, where: str) -> None:
    if s.min_rounds > s.max_rounds:
        raise SettingError(f"{where}llmcycle min_rounds={s.min_rounds} exceeds max_rounds={s.max_rounds}; "
                           "lower min_rounds or raise max_rounds")


def resolve(cli: Mapping[str, Any], ini: Mapping[str, Any]) -> Settings:
    """Global settings: command line beats ini beats default. ``None``/"" means not given."""
    s = Settings(**{f.name: pick(f.name, cli, ini)[0] for f in fields(Settings)})
    if s.update_all or s.update_append:  # both record every measured stage
        s = replace(s, update=True, update_all=True)
    if s.update_force:
        s = replace(s, update=True)
    if s.strict_all:
        s = replace(s, strict=True)
    if s.disable and s.update:  # a disabled run times nothing, so it has nothing to record
        where = "--llmcycle-disable" if _given(cli.get("disable")) else "ini option llmcycle_disable"
        raise SettingError(
            f"{where} and --llmcycle-update exclude each other: a disabled run times nothing, so it has no "
            "baseline to record; drop one" + ("" if where.startswith("--") else " (-o llmcycle_disable=false overrides the ini)")
        )
    _check_rounds(s, "")
    return s


def resolve_run(cli: Mapping[str, Any], ini: Mapping[str, Any], rootdir: Path) -> RunOptions:
    """The run's options, with paths made absolute: from the command line relative to the
    working folder (where the user typed them), from ini relative to ``rootdir``."""
    values: dict[str, Any] = {}
    for f in fields(RunOptions):
        value, source = pick(f.name, cli, ini)
        if OPTION[f.name].path and source is not None:
            absolute = (lambda p: Path(os.path.abspath(os.path.expanduser(p)))) if source == "cli" else (
                lambda p: Path(rootdir) / os.path.expanduser(p))
            value = tuple(map(absolute, value)) if OPTION[f.name].many else absolute(value)
        values[f.name] = value
    run = RunOptions(**values)
    if run.skip and run.only:
        raise SettingError("--llmcycle-skip and --llmcycle-only exclude each other; give one")
    return run


def check_output_paths(settings: Settings, run: RunOptions, rootdir: Path) -> None:
    """Refuse a report, history or TensorBoard path that is the baseline file or, with ``{module}``
    in the baseline path, lies in the baseline files' folder: writing it would replace the
    baselines (and so switch gating off) or put a file among them. Symlinks are followed."""
    from .storage.baseline import MODULE_PLACEHOLDER, BaselineFiles

    files = BaselineFiles.at(settings.baseline, rootdir)
    template = str(files.path)
    if files.per_module:
        head = template.split(MODULE_PLACEHOLDER)[0]
        folder = os.path.realpath(head if head.endswith(os.sep) else os.path.dirname(head))
    target = os.path.realpath(template)
    outputs = [("report", p) for p in run.report] + [(n, getattr(run, n)) for n in ("history", "tensorboard")]
    for name, path in outputs:
        if path is None:
            continue
        real = os.path.realpath(path)
        if files.per_module and (real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)):
            where = f"in {folder}, the folder of the per-module baseline files ({cli_flag('baseline')} {settings.baseline})"
        elif not files.per_module and real == target:
            where = f"the baseline file ({cli_flag('baseline')} {settings.baseline})"
        else:
            continue
        raise SettingError(f"{cli_flag(name)} {path} is {where}: writing it there would replace or mix with the "
                           f"baselines; give {cli_flag(name)} a path outside the baselines, e.g. reports/{Path(path).name}")


def for_marker(settings: Settings, kwargs: Mapping[str, Any], where: str) -> Settings:
    """Apply ``@pytest.mark.llmcycle(**kwargs)`` on top of the global settings."""
    unknown = sorted(set(kwargs) - set(MARKER_ARGS))
    if unknown:
        close = sorted({m for u in unknown for m in difflib.get_close_matches(u, MARKER_ARGS, n=1)})
        raise SettingError(
            f"{where}: unknown @pytest.mark.llmcycle argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(MARKER_ARGS)}" + (f" (did you mean {', '.join(close)}?)" if close else "")
        )
    changes = {}
    for k, v in kwargs.items():
        name = _MARKER_SETTING[k]
        changes[name] = convert(name, v, f"{where}: @pytest.mark.llmcycle argument {k}")
    s = replace(settings, **changes)
    _check_rounds(s, f"{where}: ")
    return s
