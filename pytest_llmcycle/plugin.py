"""pytest hooks, options, the ``llmcycle`` marker and fixture. Thin: the work is elsewhere.

Imports only the standard library and pytest at module level: this module loads in every
pytest run of a user's repo, and torch, numpy and transformers load only when a test times
something.
"""
from __future__ import annotations

from typing import Any

import pytest

from .config import (
    MARKER_ARGS, OPTIONS, RunOptions, SettingError, Settings, check_output_paths, for_marker, resolve, resolve_run,
)
from .run.keys import AGAINST_KEY, FIXTURE_KEY, OUTPUTS_KEY, PARALLEL_KEY, RUN_KEY, SETTINGS_KEY, get_run


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmcycle", "LLM latency regression tests (pytest-llmcycle)")
    for opt in OPTIONS:  # config.OPTIONS declares every flag and ini option, in --help order
        if opt.flag and opt.metavar:
            action = "append" if opt.many else "store"
            group.addoption(opt.flag, dest=opt.dest, action=action, metavar=opt.metavar, default=None, help=opt.help)
        elif opt.flag:
            group.addoption(opt.flag, dest=opt.dest, action="store_true", default=None, help=opt.help)
        if opt.ini:  # None: not given, so the command line or the default decides
            parser.addini(opt.ini, opt.ini_help, type=opt.ini_type, default=None)
    # internal: a worker process of --llmcycle-against (run.peers), started by head 0
    import argparse

    group.addoption("--llmcycle-peer", dest="llmcycle_peer", default=None, help=argparse.SUPPRESS)


def _configure_parallel(config: pytest.Config, options: RunOptions) -> None:
    worker_index, worker_count = None, 1
    if config.pluginmanager.hasplugin("xdist"):
        from .run import xdist

        worker_index, worker_count = xdist.worker_of(config)
        xdist.register(config)
    config.stash[PARALLEL_KEY] = {
        "stage_timeout_s": options.stage_timeout_s,
        "worker_index": worker_index,
        "worker_count": worker_count,
        "pin_gpus": options.xdist_gpus,
        # every xdist worker of one run shares it: a reference stored in this run is never "earlier"
        "run_id": getattr(config, "workerinput", {}).get("testrunuid"),
    }


def _configure_outputs(config: pytest.Config, options: RunOptions) -> None:
    config.stash[OUTPUTS_KEY] = {
        "reports": list(options.report),
        "history": options.history,
        "tensorboard": options.tensorboard,
        "wandb": options.wandb,
        "step_summary": options.step_summary,
        "report_samples": options.report_samples,
        "messages": [],
    }


def _write_outputs(config: pytest.Config, run: Any) -> None:
    out = config.stash.get(OUTPUTS_KEY, None)
    if out is None or hasattr(config, "workerinput"):  # xdist workers: the controller writes
        return
    import os

    results = list(run.results) if run is not None else []
    summary = results and out["step_summary"] and os.environ.get("GITHUB_STEP_SUMMARY")
    if not (out["reports"] or out["history"] or out["tensorboard"] or out["wandb"] or summary):
        return
    from .reports.outputs import run_meta, write_outputs

    # what this run writes is not an uncommitted change (meta "dirty"); the baseline files run_meta adds
    own = [*out["reports"], out["history"], out["tensorboard"], getattr(config.option, "xmlpath", None),
           (os.environ.get("WANDB_DIR") or "wandb") if out["wandb"] else None]
    meta = run_meta(run, config.rootpath, own_files=own)
    out["messages"] = write_outputs(
        results, meta, out["reports"], out["history"] if results else None,
        out["tensorboard"] if results else None, out["step_summary"], wandb=out["wandb"] if results else None,
        report_samples=out["report_samples"],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llmcycle(" + ", ".join(f"{a}=..." for a in MARKER_ARGS) + "): a latency test; per-test "
        "overrides of the llmcycle settings (threshold is a fraction, budget in seconds)",
    )
    cli = {o.name: config.getoption(o.dest) for o in OPTIONS if o.flag}
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if o.ini}
    try:
        settings = resolve(cli, ini)
        options = resolve_run(cli, ini, config.rootpath)
        check_output_paths(settings, options, config.rootpath)  # a report over the baselines: refused
    except SettingError as e:
        raise pytest.UsageError(str(e)) from None
    peer = config.getoption("llmcycle_peer", None)
    if peer:  # a worker of --llmcycle-against: head 0's settings; it reports and records nothing
        from .run.against import peer_settings

        settings, options = peer_settings(settings, options)
    elif options.against:
        if settings.update:
            raise pytest.UsageError(
                "--llmcycle-against and --llmcycle-update exclude each other: against a base nothing is recorded; drop one"
            )
        if config.getoption("numprocesses", None) or getattr(config, "workerinput", None) is not None:
            raise pytest.UsageError(
                "--llmcycle-against cannot run under pytest-xdist (-n): the base and head processes take turns on one "
                "machine, so parallel workers would time each other; run the latency tests without -n (e.g. -n 0)"
            )
    config.stash[SETTINGS_KEY] = settings
    config.stash[AGAINST_KEY] = options
    _configure_outputs(config, options)
    _configure_parallel(config, options)


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


@pytest.hookimpl(tryfirst=True)  # before pytest's own loop (and xdist's on a worker) runs the first test
def pytest_runtestloop(session: pytest.Session) -> None:
    # The baselines are read and the device resolved here, when tests are about to run, not at
    # collection: `pytest --co`, `--llmcycle-skip` and runs whose timing tests are all deselected
    # then read no baseline file and import no torch. A bad baseline file or device still stops
    # the run (UsageError, exit code 4) before the first test; the first timing test's setup
    # would be too late for that, as an error there fails one test and lets the others run.
    config = session.config
    if config.option.collectonly:
        return
    spec = config.getoption("llmcycle_peer", None)
    if spec:  # a worker of --llmcycle-against: run the tests head 0 names, in step with it
        from .run.peers import worker_loop

        run = get_run(config)
        if not session.testsfailed:
            from .run.against import settle_device_key

            prepare_run(config)  # the device (torch) now, beside head 0's start, not in the first test
            settle_device_key(run)
        worker_loop(session, spec, run, _COLLECT_ERRORS)
        return True
    if session.testsfailed and not config.option.continue_on_collection_errors:
        return  # pytest stops on the collection errors; they are what the user must see
    if config.stash[SETTINGS_KEY].disable:
        return  # smoke mode (--llmcycle-disable): nothing is judged, so no baseline is read
    if any(is_timing_test(i) for i in session.items):
        run = prepare_run(config)
        options = config.stash[AGAINST_KEY]
        if options.against:
            from .run.against import start

            start(session, run, options, [i for i in session.items if is_timing_test(i)])
        _write_header(config, run)


def _write_header(config: pytest.Config, run: Any) -> None:
    # The first line of a timed run says which file and which key it judges against, so a moved
    # rootdir (another file), a new runner's key or a stray mode shows before any verdict.
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or hasattr(config, "workerinput"):  # xdist: the controller's summary says it
        return
    from .reports.terminal import run_header, run_mode

    if run.peers is not None:
        from .run.against import header

        tr.write_line(header(run))
        return
    exists = None if run.baselines.per_module else run.baseline_path.exists()
    tr.write_line(run_header(run.shown_path(), exists, run.device_key, run.threads, run.settings.threshold, run_mode(run.settings)))


@pytest.hookimpl(tryfirst=True)  # before fixtures: a bad marker sets up nothing
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A bad @pytest.mark.llmcycle(...) fails its own test, in one line; the other tests run.
    if item.get_closest_marker("llmcycle") is not None:
        _settings_or_fail(item)


def _settings_or_fail(item: pytest.Item) -> Settings:
    try:
        return item_settings(item)
    except SettingError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)  # outside the except: no "During handling of ..." chain


def prepare_run(config: pytest.Config) -> Any:
    """Resolve the device and load the baselines once, before any test runs, failing clearly."""
    from .storage.baseline import BaselineError

    run = get_run(config)
    against = config.getoption("llmcycle_against", None) or config.getoption("llmcycle_peer", None)
    try:
        if not against:  # base against head reads no baseline file (one may exist, even an old one)
            run.baselines.preload()
    except BaselineError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        run.device  # noqa: B018 - resolve now so a bad --llmcycle-device fails before the run
    except ValueError as e:
        raise pytest.UsageError(f"--llmcycle-device: {e}") from None
    try:
        run.device_key  # noqa: B018 - a bad placeholder in the key fails before the run, too
    except ValueError as e:
        raise pytest.UsageError(f"--llmcycle-device-key (llmcycle_device_key): {e}") from None
    if run.settings.update:
        problem = run.baselines.check_writable()
        if problem:
            raise pytest.UsageError(f"{problem}; choose another location with --llmcycle-baseline")
    return run


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.disable:  # say it: a smoke run gates nothing
        return ["llmcycle: disabled (--llmcycle-disable): each timed function runs once, untimed; nothing is judged or recorded"]
    return []


def _progress(config: pytest.Config) -> Any:
    """The fixture's progress lines, on pytest's terminal past output capture (None without a
    terminal: an xdist worker's lines would only reach its controller late, as one block)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or hasattr(config, "workerinput"):
        return None
    from contextlib import nullcontext

    from .run.fixture import Progress

    capman = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
            tr.write_line(line)

    return Progress(write, config.get_verbosity())


@pytest.fixture
def llmcycle(request: pytest.FixtureRequest) -> Any:
    """Times the stages of an inference cycle; each stage is judged against its committed baseline.
    llmcycle.measure(stage, fn, setup=None): time fn() (warm-up, adaptive rounds); setup() runs untimed before each call
    with llmcycle.stage(name): ...: time each run of the block (loop it 10+ times to gate it)
    llmcycle.record(stage, measurement): judge a Measurement taken by your own timer
    llmcycle.generate(model, inputs, max_new_tokens) / llmcycle.tokens(loop): prefill, per-token decode, e2e
    llmcycle.train_step(loss_fn, model=, optimizer=): forward, backward and optimizer stages
    llmcycle.counted(stage, fn): measure() plus FLOP, aten-op and byte counters
    llmcycle.scaling(stage, make, sizes): cost against input size, a power-law fit
    llmcycle.ab(a, b): speedup of b over a with a 95% interval, no baseline needed
    llmcycle.device: the torch.device to put models and inputs on
    A regression fails the test after its body. --llmcycle-disable: each timed function runs once, untimed.

    Each stage: the first call is reported as cold, then warm-up and rounds until the budget
    (``--llmcycle-budget``) is spent or the median is precise; a stage that looks slower is
    re-measured before it fails. ``--llmcycle-update`` records baselines (commit the file).
    Per test: ``@pytest.mark.llmcycle(threshold=0.1, budget=2.0, ...)``. All options:
    ``pytest --help``, section llmcycle.
    """
    from .run.fixture import LLMCycle

    settings = _settings_or_fail(request.node)  # pytest_runtest_setup has normally failed a bad marker
    # prepare_run did its work in pytest_runtestloop; here it is a cached lookup, and the
    # fallback for a test that asks for this fixture by request.getfixturevalue("llmcycle").
    # A smoke run (--llmcycle-disable) reads no baseline and resolves no device it does not use.
    run = get_run(request.config) if settings.disable else prepare_run(request.config)
    if run.peers is not None or run.peer is not None:  # --llmcycle-against: timed beside the base
        from .run.against import begin_test, end_test, paired_settings

        settings = paired_settings(settings, request.config.stash[AGAINST_KEY].against_pairs, head0=run.peers is not None)
        begin_test(run, request.node)
        request.addfinalizer(lambda: end_test(run, request.node.nodeid))
    obj = LLMCycle(run, request.node.nodeid, settings, progress=_progress(request.config))
    request.node.stash[FIXTURE_KEY] = obj
    return obj


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    # Judged inside the call phase, so a regression fails *this* item (JUnit, -x, --lf see it).
    try:
        result = yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        # The body raised after measuring (an assertion, pytest.fail, a helper's check): its
        # stages still reach the table, the reports and JUnit, marked as from a failed test.
        _finish(item, test_failed=True)
        raise
    failing = _finish(item)
    if failing:
        from .reports.terminal import failure_message

        run = item.config.stash.get(RUN_KEY, None)
        against = run.peers.base_label if run is not None and run.peers is not None else None
        pytest.fail(failure_message(failing, against=against), pytrace=False)
    return result


def _finish(item: pytest.Item, test_failed: bool = False) -> list:
    """Judge the item's remaining stages and add their JUnit properties; the rows that fail it."""
    obj = item.stash.get(FIXTURE_KEY, None)
    if obj is None:
        return []
    # the item lives to the end of the session: let go of the fixture and its working state
    # (every stage's raw samples in ms) once its rows are judged; the run keeps the rows
    del item.stash[FIXTURE_KEY]
    failing = obj.finish(test_failed=test_failed)
    from .reports.outputs import junit_properties

    item.user_properties.extend(junit_properties(obj.results))
    return failing


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None and run.peers is not None:  # --llmcycle-against: stop the base's processes
        run.peers.close(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
    step = "baselines"
    try:
        if run is not None and run.pending:
            _write_updates(session, run)
        if run is not None and run.results:
            # the loaded baseline files have served: every row holds the entry it was judged
            # against. Let go of them before the reports and the terminal table are built, so those
            # reuse their memory instead of adding to the run's peak (device key resolved first)
            run.device_key  # noqa: B018
            run.baselines.forget_loaded()
        step = "reports"
        _write_outputs(session.config, run)
    except KeyboardInterrupt:
        # A Ctrl-C while the baselines or reports are written: what was written stays (each file
        # is replaced whole or not at all) and the summary names what was not; no traceback.
        _interrupted(session, run, step)
    if run is not None and run.refused and session.exitstatus == pytest.ExitCode.OK:
        # --llmcycle-update stored nothing for these tests: a CI job that records must not go
        # green (the summary gives the command that forces it, --llmcycle-update-force)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if run is not None and run.reference_interrupted:
        session.exitstatus = pytest.ExitCode.INTERRUPTED


def _write_updates(session: pytest.Session, run: Any) -> None:
    from .storage.baseline import BaselineError

    try:
        run.write_updates()
    except (OSError, BaselineError) as e:
        run.write_error = f"baselines NOT written: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    except Exception as e:  # filelock.Timeout and friends: say it, don't crash the summary
        run.write_error = f"baselines NOT written: {type(e).__name__}: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _interrupted(session: pytest.Session, run: Any, step: str) -> None:
    from .reports.escape import visible

    session.exitstatus = pytest.ExitCode.INTERRUPTED
    parts = []
    if step == "baselines" and run is not None:
        written = set(run.written)
        missing = [f"{n} {s}" for k, n, s, _ in run.pending if f"{k} {n} {s}" not in written]
        if missing:
            parts.append(f"baselines NOT written for {len(missing)} stage(s): " + ", ".join(visible(m) for m in missing))
    out = session.config.stash.get(OUTPUTS_KEY, None)
    if out is not None and (out["reports"] or out["history"] or out["tensorboard"] or out["wandb"]):
        parts.append("the reports and history NOT written" if step == "baselines" else "the reports and history not all written")
    message = "interrupted (Ctrl-C) while writing: " + ("; ".join(parts) or "nothing was left unwritten")
    if run is not None:
        run.write_error = f"{run.write_error}; {message}" if run.write_error else message
    else:  # no timing test ran: nothing but the outputs, and the summary has no run to show
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"llmcycle: {message}", red=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None or not (run.results or getattr(run, "write_error", None)):
        return
    from .reports.escape import visible
    from .reports.terminal import not_judged_line, refusal_lines, terminal_table, warning_lines

    tr = terminalreporter
    if run.peers is not None:  # --llmcycle-against
        tr.write_sep("-", f"llmcycle: this checkout against {visible(run.peers.base_label)}, {run.threads} thread(s)")
        for nodeid, sections in sorted(run.peers.removed.items()):
            tr.write_line(f"llmcycle: only in the base (removed): {visible(nodeid)} {', '.join(visible(x) for x in sections)}")
        for nodeid, why in sorted(run.peers.base_failures.items()):
            tr.write_line(f"llmcycle: the base's {visible(nodeid)} failed ({visible(why)}); its stages are judged as far as it ran", yellow=True)
    else:
        tr.write_sep(
            "-", f"llmcycle: {visible(run.device_key)}, {run.threads} thread(s), baseline {visible(run.shown_path())}"
        )
    if run.results:
        tr.write_line(terminal_table(run.results))
    if any(r.verdict.normalised for r in run.results):
        tr.write_line("* normalised by the machine's speed (reference workload) since the baseline was recorded")
    unjudged = not_judged_line(run.results, run.settings.strict_all)
    if unjudged:
        tr.write_line(unjudged, yellow=True)
    for line in warning_lines(run.results):
        tr.write_line(line, yellow=True)
    for i, line in enumerate(refusal_lines(getattr(run, "refused", ()), run.settings.update_all)):
        tr.write_line(line, red=i == 0)
    # a test with a regressed stage (or that failed) is never summed up as faster; "faster" only
    # where time decided, "improved" where counters that fell did (issue 12)
    failed = {r.nodeid for r in run.results if r.outcome == "regressed" or r.test_failed}
    better = [r for r in run.results if r.outcome == "improved" and not r.updated and r.nodeid not in failed]
    faster = sorted({r.nodeid for r in better})
    by_time = all(r.verdict.decided_by != "counters" for r in better)
    if faster and run.peers is not None:  # --llmcycle-against: faster than the base; nothing to record
        how = "faster than in" if by_time else "improved (time or counters) against"
        tr.write_line(f"llmcycle: {len(faster)} test(s) {how} {visible(run.peers.base_label)}")
    elif faster:
        from .reports.terminal import accept_command

        how = "faster than" if by_time else "improved (time or counters) against"
        tr.write_line(f"llmcycle: {len(faster)} test(s) {how} their baseline; to record it: {accept_command(faster)}")
    if run.written:
        files = sorted(set(run.written_files))
        where = files[0] if len(files) == 1 else f"{len(files)} files ({run.baseline_path})"
        tr.write_line(f"llmcycle: wrote {len(run.written)} baseline entr{'y' if len(run.written) == 1 else 'ies'} to {where}")
    if run.settings.update:
        unwritten = sorted({visible(r.nodeid) for r in run.results if r.test_failed})
        if unwritten:
            tr.write_line(
                f"llmcycle: NOT written to the baseline: the stages of {len(unwritten)} failed test(s) "
                f"({', '.join(unwritten[:3])}{', ...' if len(unwritten) > 3 else ''}); fix them and record again",
                yellow=True,
            )
    if getattr(run, "write_error", None):
        tr.write_line(f"llmcycle: {run.write_error}", red=True)
    if getattr(run, "reference_interrupted", False):
        tr.write_line("llmcycle: interrupted (Ctrl-C) while timing the reference workload: the entries were written "
                      "without a new reference (the file keeps its stored one, if any)", yellow=True)
    for note in run.baselines.skipped:  # *.json files in a {module} folder that are not baseline files
        tr.write_line(f"llmcycle: {visible(note)}", yellow=True)
    for message, is_error in config.stash.get(OUTPUTS_KEY, {}).get("messages", []):
        tr.write_line(f"llmcycle: {message}", red=is_error)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # a worker of --llmcycle-against tells head 0 which of its test files failed to collect
    if report.failed:
        _COLLECT_ERRORS.append(report)


#: collection errors of this process (read by a --llmcycle-against worker when it says hello)
_COLLECT_ERRORS: list = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    report = yield
    if report.failed and item.config.getoption("llmcycle_peer", None):
        # a --llmcycle-against worker: the first line of why the base's test failed, for head 0's report
        from .run.peers import SectionSkipped

        if not (call.excinfo is not None and call.excinfo.errisinstance(SectionSkipped)):
            text = str(report.longrepr).strip().splitlines()
            item.config._llmcycle_failure = f"{report.when}: {text[-1] if text else 'failed'}"  # type: ignore[attr-defined]
    return report
