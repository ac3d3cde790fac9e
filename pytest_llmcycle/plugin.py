"""pytest hooks, options, the ``llmcycle`` marker and fixture. Thin: the work is elsewhere.

Imports only the standard library and pytest at module level: this module loads in every
pytest run of a user's repo, and torch, numpy and transformers load only when a test times
something.
"""
from __future__ import annotations

from typing import Any

import pytest

from .config import MARKER_ARGS, SettingError, Settings, for_marker, resolve
from .run.keys import FIXTURE_KEY, OUTPUTS_KEY, PARALLEL_KEY, RUN_KEY, SETTINGS_KEY, get_run

# (setting, flag, ini help, metavar/action)
_OPTIONS = [
    ("baseline", "--llmcycle-baseline", "baseline JSON file, relative to the rootdir (default: .llmcycle/baselines.json)", "PATH"),
    ("threshold", "--llmcycle-threshold", "slowdown that fails a stage, as a fraction (default: 0.10 = 10%%)", "FRACTION"),
    ("alpha", "--llmcycle-alpha", "significance level of the regression test (default: 0.01)", "P"),
    ("budget_s", "--llmcycle-budget", "time budget per stage measurement in seconds (default: 1.0)", "SECONDS"),
    ("min_rounds", "--llmcycle-min-rounds", "fewest timed rounds per stage, even past the budget (default: 10)", "N"),
    ("device", "--llmcycle-device", "device to time on: auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, else MPS, else CPU)", "DEVICE"),
    ("device_key", "--llmcycle-device-key", "name baselines are stored under, e.g. one name for a fleet of identical CI runners (default: device kind and model)", "KEY"),
    ("threads", "--llmcycle-threads", "torch CPU threads while timing (default: half the cores)", "N"),
]
_FLAGS = [
    ("update", "--llmcycle-update", "record baselines for new and changed stages (unchanged entries stay as they are)"),
    ("update_all", "--llmcycle-update-all", "re-record every measured stage's baseline"),
    ("update_append", "--llmcycle-update-append",
     "add this run to every measured stage's baseline as one more recording process; run it in a few "
     "processes and the verdicts allow for how far their medians differ"),
    ("strict", "--llmcycle-strict", "fail stages that have no usable baseline"),
]


def _ini_name(flag: str) -> str:
    """The ini spelling of a command-line flag: --llmcycle-budget -> llmcycle_budget."""
    return flag.lstrip("-").replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmcycle", "LLM latency regression tests (pytest-llmcycle)")
    for name, flag, help_text, metavar in _OPTIONS:
        group.addoption(flag, dest=f"llmcycle_{name}", metavar=metavar, default=None, help=help_text)
        parser.addini(_ini_name(flag), help_text, default=None)
    for name, flag, help_text in _FLAGS:
        group.addoption(flag, dest=f"llmcycle_{name}", action="store_true", default=None, help=help_text)
    parser.addini("llmcycle_strict", "fail stages that have no usable baseline", type="bool", default=False)
    parser.addini("llmcycle_remeasure", "re-measure a stage that looks regressed before failing it (default: true)", default=None)
    parser.addini(
        "llmcycle_machine_check",
        "time a reference workload when a stage looks slower, to tell a slower machine from slower code (default: true)",
        default=None,
    )
    group.addoption("--llmcycle-skip", action="store_true", default=False, help="deselect timing tests (tests using llmcycle)")
    group.addoption("--llmcycle-only", action="store_true", default=False, help="run only timing tests")
    _addoption_outputs(parser, group)
    _addoption_parallel(parser, group)


def _addoption_parallel(parser: pytest.Parser, group: Any) -> None:
    help_timeout = (
        "hard limit in seconds of one measurement of a stage; a stage past it is stopped at its next call "
        "and fails (default: 300 or 60x the stage's budget, whichever is larger; 0: no limit)"
    )
    group.addoption("--llmcycle-stage-timeout", dest="llmcycle_stage_timeout", default=None, metavar="SECONDS", help=help_timeout)
    parser.addini("llmcycle_stage_timeout", help_timeout, default=None)
    help_gpus = "with pytest-xdist: worker k times on GPU k mod the GPU count when the device is cuda or auto"
    group.addoption("--llmcycle-xdist-gpus", dest="llmcycle_xdist_gpus", action="store_true", default=None, help=help_gpus)
    parser.addini("llmcycle_xdist_gpus", help_gpus, type="bool", default=False)


def _configure_parallel(config: pytest.Config) -> None:
    import math

    raw = config.getoption("llmcycle_stage_timeout")
    where = "--llmcycle-stage-timeout"
    if raw in (None, ""):
        raw, where = config.getini("llmcycle_stage_timeout"), "ini option llmcycle_stage_timeout"
    timeout = None
    if raw not in (None, ""):
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not (math.isfinite(timeout) and timeout >= 0):
            raise pytest.UsageError(f"{where}={raw!r} is not valid: expected seconds >= 0 (0: no limit), e.g. 300")
    pin = bool(config.getoption("llmcycle_xdist_gpus") or config.getini("llmcycle_xdist_gpus"))
    worker_index, worker_count = None, 1
    if config.pluginmanager.hasplugin("xdist"):
        from .run import xdist

        worker_index, worker_count = xdist.worker_of(config)
        xdist.register(config)
    config.stash[PARALLEL_KEY] = {
        "stage_timeout_s": timeout,
        "worker_index": worker_index,
        "worker_count": worker_count,
        "pin_gpus": pin,
    }


def _addoption_outputs(parser: pytest.Parser, group: Any) -> None:
    group.addoption(
        "--llmcycle-report", dest="llmcycle_report", action="append", default=None, metavar="PATH",
        help="write a report of every stage; format by extension: .md (pull-request comment), .json (tools, "
        "llmcycle compare), .html (self-contained, with plots). Repeat for several",
    )
    group.addoption(
        "--llmcycle-history", dest="llmcycle_history", default=None, metavar="PATH",
        help="append each run's stage medians to this SQLite file; the HTML report and `llmcycle history` show the trend",
    )
    group.addoption(
        "--llmcycle-tensorboard", dest="llmcycle_tensorboard", default=None, metavar="LOGDIR",
        help="also export stage medians as TensorBoard scalars (needs the tensorboard package)",
    )
    parser.addini("llmcycle_report", "report files to write (.md, .json, .html), relative to the rootdir", type="args", default=[])
    parser.addini("llmcycle_history", "SQLite history file, relative to the rootdir", default=None)
    parser.addini("llmcycle_tensorboard", "TensorBoard log folder, relative to the rootdir", default=None)
    parser.addini(
        "llmcycle_step_summary", "append the Markdown report to $GITHUB_STEP_SUMMARY when it is set (default: true)",
        type="bool", default=True,
    )


def _configure_outputs(config: pytest.Config) -> None:
    """Resolve output paths once: command line relative to the working folder, ini to the rootdir."""
    import os
    from pathlib import Path

    from .reports.outputs import FORMATS, report_format

    def path(cli: Any, ini: Any) -> Any:
        if cli:
            return Path(os.path.abspath(os.path.expanduser(cli)))
        if ini:
            return config.rootpath / os.path.expanduser(ini)
        return None

    reports = [path(p, None) for p in config.getoption("llmcycle_report") or []]
    reports = reports or [path(None, p) for p in config.getini("llmcycle_report")]
    for p in reports:
        if report_format(str(p)) is None:
            raise pytest.UsageError(
                f"--llmcycle-report {p}: unknown report format {p.suffix or '(no extension)'!r}; "
                f"end the file name with one of {', '.join(sorted(FORMATS))}"
            )
    config.stash[OUTPUTS_KEY] = {
        "reports": reports,
        "history": path(config.getoption("llmcycle_history"), config.getini("llmcycle_history")),
        "tensorboard": path(config.getoption("llmcycle_tensorboard"), config.getini("llmcycle_tensorboard")),
        "step_summary": config.getini("llmcycle_step_summary"),
        "messages": [],
    }


def _write_outputs(config: pytest.Config, run: Any) -> None:
    out = config.stash.get(OUTPUTS_KEY, None)
    if out is None or hasattr(config, "workerinput"):  # xdist workers: the controller writes
        return
    import os

    results = list(run.results) if run is not None else []
    summary = results and out["step_summary"] and os.environ.get("GITHUB_STEP_SUMMARY")
    if not (out["reports"] or out["history"] or out["tensorboard"] or summary):
        return
    from .reports.outputs import run_meta, write_outputs

    meta = run_meta(run, config.rootpath)
    out["messages"] = write_outputs(
        results, meta, out["reports"], out["history"] if results else None,
        out["tensorboard"] if results else None, out["step_summary"],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llmcycle(" + ", ".join(f"{a}=..." for a in MARKER_ARGS) + "): a latency test; per-test "
        "overrides of the llmcycle settings (threshold is a fraction, budget in seconds)",
    )
    cli = {name: config.getoption(f"llmcycle_{name}") for name, *_ in _OPTIONS + _FLAGS}
    ini = {name: config.getini(_ini_name(flag)) for name, flag, *_ in _OPTIONS}
    ini["strict"] = config.getini("llmcycle_strict")
    ini["remeasure"] = config.getini("llmcycle_remeasure")
    ini["machine_check"] = config.getini("llmcycle_machine_check")
    try:
        settings = resolve(cli, ini)
    except SettingError as e:
        raise pytest.UsageError(str(e)) from None
    if settings.update_all or settings.update_append:
        from dataclasses import replace

        settings = replace(settings, update=True, update_all=True)
    if config.getoption("llmcycle_skip") and config.getoption("llmcycle_only"):
        raise pytest.UsageError("--llmcycle-skip and --llmcycle-only exclude each other; give one")
    config.stash[SETTINGS_KEY] = settings
    _configure_outputs(config)
    _configure_parallel(config)


def is_timing_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("llmcycle") is not None or "llmcycle" in getattr(item, "fixturenames", ())


def item_settings(item: pytest.Item) -> Settings:
    settings = item.config.stash[SETTINGS_KEY]
    # Markers merge from the outside in: a module's pytestmark sets budget=, a function's
    # marker adds threshold=, the closest one wins where both set the same argument.
    kwargs: dict = {}
    for marker in reversed(list(item.iter_markers("llmcycle"))):
        if marker.args:
            raise SettingError(f"{item.nodeid}: @pytest.mark.llmcycle takes keyword arguments only, e.g. threshold=0.1")
        kwargs.update(marker.kwargs)
    if not kwargs:
        return settings
    return for_marker(settings, kwargs, item.nodeid)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: tests that will not run cost nothing
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    skip, only = config.getoption("llmcycle_skip"), config.getoption("llmcycle_only")
    if skip or only:
        keep = [i for i in items if is_timing_test(i) != bool(skip)]
        dropped = [i for i in items if is_timing_test(i) == bool(skip)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    timing = [i for i in items if is_timing_test(i)]
    if not timing:
        return
    try:
        for item in timing:
            item_settings(item)
    except SettingError as e:
        raise pytest.UsageError(str(e)) from None
    prepare_run(config)


def prepare_run(config: pytest.Config) -> Any:
    """Resolve the device and load the baselines once, before any test runs, failing clearly."""
    from .storage.baseline import BaselineError

    run = get_run(config)
    try:
        run.baselines.preload()
    except BaselineError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        run.device  # noqa: B018 - resolve now so a bad --llmcycle-device fails before the run
    except ValueError as e:
        raise pytest.UsageError(f"--llmcycle-device: {e}") from None
    if run.settings.update:
        problem = run.baselines.check_writable()
        if problem:
            raise pytest.UsageError(f"{problem}; choose another location with --llmcycle-baseline")
    return run


@pytest.fixture
def llmcycle(request: pytest.FixtureRequest) -> Any:
    """Times the stages of an inference cycle and compares them with committed baselines."""
    from .run.fixture import LLMCycle

    try:
        settings = item_settings(request.node)
    except SettingError as e:
        raise pytest.UsageError(str(e)) from None
    obj = LLMCycle(prepare_run(request.config), request.node.nodeid, settings)
    request.node.stash[FIXTURE_KEY] = obj
    return obj


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    # Judged inside the call phase, so a regression fails *this* item (JUnit, -x, --lf see it).
    result = yield
    obj = item.stash.get(FIXTURE_KEY, None)
    if obj is None:
        return result
    failing = obj.finish()
    from .reports.outputs import junit_properties

    item.user_properties.extend(junit_properties(obj.results))
    if failing:
        from .reports.terminal import failure_message

        pytest.fail(failure_message(failing), pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is None or not run.pending:
        return _write_outputs(session.config, run)
    from .storage.baseline import BaselineError

    try:
        run.write_updates()
    except (OSError, BaselineError) as e:
        run.write_error = f"baselines NOT written: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    except Exception as e:  # filelock.Timeout and friends: say it, don't crash the summary
        run.write_error = f"baselines NOT written: {type(e).__name__}: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _write_outputs(session.config, run)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None or not (run.results or getattr(run, "write_error", None)):
        return
    from .reports.terminal import terminal_table

    tr = terminalreporter
    tr.write_sep("-", f"llmcycle: {run.device_key}, {run.threads} thread(s)")
    if run.results:
        tr.write_line(terminal_table(run.results))
    if any(r.verdict.normalised for r in run.results):
        tr.write_line("* normalised by the machine's speed (reference workload) since the baseline was recorded")
    faster = sorted({r.nodeid for r in run.results if r.outcome == "improved" and not r.updated})
    if faster:
        from .reports.terminal import accept_command

        tr.write_line(f"llmcycle: {len(faster)} test(s) faster than their baseline; to record it: {accept_command(faster)}")
    if run.written:
        files = sorted(set(run.written_files))
        where = files[0] if len(files) == 1 else f"{len(files)} files ({run.baseline_path})"
        tr.write_line(f"llmcycle: wrote {len(run.written)} baseline entr{'y' if len(run.written) == 1 else 'ies'} to {where}")
    if getattr(run, "write_error", None):
        tr.write_line(f"llmcycle: {run.write_error}", red=True)
    for message, is_error in config.stash.get(OUTPUTS_KEY, {}).get("messages", []):
        tr.write_line(f"llmcycle: {message}", red=is_error)
