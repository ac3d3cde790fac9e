"""What a run leaves behind besides the terminal: report files, the GitHub job summary, the
history store, TensorBoard scalars, a Weights & Biases run and JUnit properties.

The plugin calls :func:`write_outputs` once at the end of the session (on the controller, not
on xdist workers) and :func:`junit_properties` per test item. Nothing here times anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from sys import intern
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .escape import xml_text

if TYPE_CHECKING:
    from ..run.results import StageResult

# Stdlib only at import: the plugin imports this module in every run (report paths are checked
# at configure time), so numpy and friends load only when something is written.
COLD, CYCLE = "cold", "cycle"  # == results.COLD, results.CYCLE (tested)

#: report formats by file extension
FORMATS = {".md": "markdown", ".markdown": "markdown", ".json": "json", ".html": "html", ".htm": "html"}


def report_format(path: str) -> str | None:
    return FORMATS.get(Path(path).suffix.lower())


_round_sig: Any = None


def _round(x: float | None) -> float | None:
    global _round_sig
    if _round_sig is None:  # imported on first use: this module is imported in every run
        from ..storage.baseline import round_sig as _round_sig
    return None if x is None else _round_sig(float(x))


def junit_properties(results: Iterable["StageResult"]) -> list[tuple[str, Any]]:
    """``llmcycle.<stage>.median_ms`` / ``.baseline_ms`` / ``.change`` / ``.verdict`` ... per row.

    Names and text values are XML-safe (:func:`escape.xml_text`): pytest escapes property
    values but not names, and one character XML cannot hold makes the whole report unreadable.
    """
    props: list[tuple[str, Any]] = []
    for r in results:
        if r.kind == COLD:
            props.append((f"llmcycle.{r.stage}.cold_ms", _round(r.median_ms)))
            continue
        name = "cycle" if r.kind == CYCLE else r.stage
        p = f"llmcycle.{name}"
        props.append((f"{p}.median_ms", _round(r.median_ms)))
        if r.baseline is not None:
            props.append((f"{p}.baseline_ms", _round(r.baseline.median_ms)))
        if r.verdict.change is not None:
            props.append((f"{p}.change", round(r.verdict.change, 4)))
        props.append((f"{p}.verdict", r.outcome))
        if r.outcome in ("inconclusive", "not comparable", "new") and r.verdict.reason:  # not judged: say why
            props.append((f"{p}.reason", r.verdict.reason))
        if r.warning:  # past twice its baseline: never a plain pass
            props.append((f"{p}.warning", r.warning))
        if r.test_failed:
            props.append((f"{p}.test_failed", "true"))
        if r.unit != "call":
            props.append((f"{p}.unit", f"ms/{r.unit}"))
        if r.kind == CYCLE:
            props.append((f"{p}.terms", r.stage))
    # one pass over all the text first: nearly always nothing needs escaping (500 tests: 15,000 strings)
    text = "".join([k for k, _ in props] + [v for _, v in props if isinstance(v, str)])
    if xml_text(text) == text:
        # every test repeats the same names (llmcycle.prefill.median_ms ...): one copy each for the run
        return [(intern(k), v) for k, v in props]
    return [(xml_text(k), xml_text(v) if isinstance(v, str) else v) for k, v in props]


def _git(rootdir: Path, *args: str) -> str | None:
    """``git <args>`` in ``rootdir``: its output, or None when there is no git, no repository or no answer."""
    import subprocess

    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=rootdir, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


#: what a run writes besides the files it is told about: Python's bytecode caches
_RUN_WRITES = (f"*{os.sep}__pycache__{os.sep}*", "*.pyc")


def _own_patterns(paths: Iterable[Any]) -> list[str]:
    """fnmatch patterns of what the run itself writes at ``paths`` (files or folders; a baseline
    path may hold ``{module}``): the path, what is under it, and its lock, journal and temp files."""
    import glob

    out = list(_RUN_WRITES)
    for p in paths:
        if p is None:
            continue
        real = Path(os.path.realpath(os.path.expanduser(str(p))))
        full = glob.escape(str(real)).replace("{module}", "*")  # glob.escape keeps braces
        hidden = glob.escape(str(real.parent / ("." + real.name))).replace("{module}", "*")
        out += [full, full + os.sep + "*", full + ".*", full + "-*", hidden + ".*"]
    return out


def _commit(rootdir: Path, own: Iterable[Any] = ()) -> tuple[str | None, bool | None]:
    """(the checked-out commit, whether the working tree differs from it), None where unknown.

    Dirty means a tracked file is modified, staged, deleted or renamed, or an untracked file
    that git does not ignore exists: a new module can change what the tests import and measure
    as much as an edit can. What the run writes itself is not counted: ``own`` (the baseline
    files, reports, history, JUnit XML ...), and bytecode caches. ``GITHUB_SHA`` names the
    commit on GitHub Actions; the tree is still asked whether it is dirty.
    """
    import fnmatch

    head = _git(rootdir, "rev-parse", "--show-toplevel", "HEAD")
    lines = head.split("\n") if head else []
    top, sha = (lines[0], lines[1].strip()) if len(lines) >= 2 and lines[1].strip() else (None, None)
    sha = os.environ.get("GITHUB_SHA") or sha
    if top is None:
        return sha, None
    status = _git(rootdir, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    if status is None:
        return sha, None
    patterns = _own_patterns(own)
    entries = status.split("\0")
    i = 0
    while i < len(entries):
        entry, i = entries[i], i + 1
        if len(entry) < 4:
            continue
        if entry[0] in "RC":  # a rename or copy: the next entry is its source path
            i += 1
        path = str(Path(top) / entry[3:])  # porcelain paths are relative to the repository's top
        if not any(fnmatch.fnmatchcase(path, pat) for pat in patterns):
            return sha, True
    return sha, False


def run_meta(run: Any, rootdir: Path, own_files: Iterable[Any] = ()) -> dict[str, Any]:
    """Facts about the run that reports, history and the CLI show (no device work is started).

    ``commit`` is the checked-out commit's sha and ``dirty`` whether the working tree had changes
    (see :func:`_commit`; ``own_files`` are what this run writes, never counted), both None
    outside a git repository.
    """
    import platform
    from datetime import datetime, timezone

    from .. import __version__
    from ..measure import device as devmod

    meta: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "plugin_version": __version__,
    }
    own = list(own_files)
    if run is not None:
        own.append(run.baseline_path)
    meta["commit"], meta["dirty"] = _commit(rootdir, own)
    meta.update(devmod.library_versions())
    if os.environ.get("GITHUB_REF_NAME"):
        meta["ref"] = os.environ["GITHUB_REF_NAME"]
    if run is None:
        return meta
    s = run.settings
    meta["settings"] = {"threshold": s.threshold, "alpha": s.alpha, "budget_s": s.budget_s, "update": s.update}
    peers = getattr(run, "peers", None)
    if peers is not None:  # --llmcycle-against: what the run was judged against
        meta["against"] = {
            "base": peers.base_label, "pairs": peers.pairs, "removed": dict(peers.removed),
            "base_failures": dict(peers.base_failures),
        }
    try:
        meta["baseline_file"] = str(Path(run.baseline_path).relative_to(rootdir))
    except ValueError:
        meta["baseline_file"] = str(run.baseline_path)
    if run.results:  # the device was resolved by the tests: naming it costs nothing more
        meta["device"] = run.device
        meta["device_key"] = run.device_key
        meta["threads"] = run.threads
        try:
            meta["device_name"] = devmod.device_name(run.device)
        except Exception:  # a device name is decoration; never fail the run for it
            pass
    return meta


def render(fmt: str, results: Sequence["StageResult"], meta: dict, trends: dict | None = None,
           all_samples: bool = False) -> str:
    """One report's text; ``all_samples``: the JSON report writes every copy of every sample
    (see ``jsondoc``: by default not the baseline samples the baseline file holds)."""
    if fmt == "markdown":
        from . import markdown as report_markdown

        return report_markdown.render(results, meta)
    if fmt == "json":
        from . import jsondoc as report_json

        return report_json.render(results, meta, all_samples)
    from . import htmlpage as report_html

    return report_html.render(results, meta, trends)


def _trends(store: Any, results: Sequence["StageResult"]) -> dict:
    rows = [r for r in results if r.kind != COLD]
    many = getattr(store, "series_many", None)  # a store of the two-method protocol may lack it
    if many is not None:
        found = many((r.nodeid, r.stage, r.device_key) for r in rows)
        return {(r.nodeid, r.stage): found[(r.nodeid, r.stage, r.device_key)] for r in rows}
    return {(r.nodeid, r.stage): store.series(r.nodeid, r.stage, r.device_key) for r in rows}


def write_outputs(
    results: Sequence["StageResult"],
    meta: dict,
    reports: Sequence[Path] = (),
    history: Path | None = None,
    tensorboard: Path | None = None,
    step_summary: bool = True,
    wandb: str | None = None,
    report_samples: bool = False,
) -> list[tuple[str, bool]]:
    """Write every requested output; returns (message, is_error) lines for the terminal.

    One output failing (a read-only folder, a locked database) never stops the others, and
    never changes the run's outcome: the tests have been judged already.
    ``report_samples`` (``--llmcycle-report-samples``): the JSON report writes every sample.
    """
    from ..storage.baseline import atomic_write_text

    messages: list[tuple[str, bool]] = []
    trends: dict = {}
    if history is not None:
        try:
            from ..storage.history import open_store

            store = open_store(history)
            store.append(meta, results)
            if any(report_format(str(p)) == "html" for p in reports):  # only the HTML draws trends
                trends = _trends(store, results)
            messages.append((f"appended {len(results)} row(s) to history {history}", False))
        except Exception as e:  # sqlite3.Error, OSError
            messages.append((f"history {history} NOT written: {type(e).__name__}: {e}", True))
    rendered: dict[str, str] = {}  # one rendering per format, shared by every file and the job summary

    def text(fmt: str) -> str:
        if fmt not in rendered:
            rendered[fmt] = render(fmt, results, meta, trends, report_samples)
        return rendered[fmt]

    fmts = [report_format(str(path)) or "markdown" for path in reports]
    for i, (path, fmt) in enumerate(zip(reports, fmts)):
        try:
            atomic_write_text(path, text(fmt))
            messages.append((f"wrote {fmt} report {path}", False))
        except (OSError, ValueError) as e:
            messages.append((f"report {path} NOT written: {e}", True))
        if fmt != "markdown" and fmt not in fmts[i + 1:]:
            rendered.pop(fmt, None)  # a JSON or HTML page is megabytes at 2,000 stages: not kept past its last file
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary and results:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(text("markdown") + "\n")
        except OSError as e:
            messages.append((f"GITHUB_STEP_SUMMARY {summary} NOT written: {e}", True))
    if tensorboard is not None:
        messages.append(export_tensorboard(tensorboard, results, meta))
    if wandb is not None:
        messages.append(export_wandb(wandb, results, meta))
    return messages


def monitoring_scalars(results: Sequence["StageResult"]) -> dict[str, float]:
    """The numbers a dashboard follows over runs, one tag each: ``<test>/<stage>/<metric>``.

    Per stage (``cycle`` for a test's cycle row): ``median_ms``, ``change`` (a fraction, against
    the baseline) and ``cold_ms`` (the first call: compile and first-touch costs), plus its
    deterministic counters (``flops``, ``aten_ops``, ``alloc_bytes``, ``peak_bytes``). TensorBoard
    and W&B export the same tags.
    """
    out: dict[str, float] = {}
    for r in results:
        tag = f"{r.nodeid}/{'cycle' if r.kind == CYCLE else r.stage}"
        if r.kind == COLD:
            if r.median_ms is not None:
                out[f"{tag}/cold_ms"] = float(r.median_ms)
            continue
        if r.median_ms is not None:
            out[f"{tag}/median_ms"] = float(r.median_ms)
        if r.verdict.change is not None:
            out[f"{tag}/change"] = float(r.verdict.change)
        for name, value in sorted(r.counters.items()):
            if name == "counted_by":  # the counting rules' version (engine.counts.SEMANTICS_KEY), not a counter
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{tag}/{name}"] = float(value)
    return out


def _run_line(meta: dict) -> str:
    """The run's facts as one line of Markdown (TensorBoard renders its text as Markdown)."""
    from .escape import md_text

    keys = ("commit", "dirty", "ref", "device_key", "device_name", "threads", "torch", "transformers", "plugin_version")
    return ", ".join(f"{k} {md_text(meta[k])}" for k in keys if meta.get(k) is not None)


def export_tensorboard(logdir: Path, results: Sequence["StageResult"], meta: dict) -> tuple[str, bool]:
    """:func:`monitoring_scalars` at step = seconds since the epoch, so runs line up in time.

    Every run adds an event file to ``logdir``; TensorBoard reads them together, one point per
    run. The run's commit and device go in as text (``llmcycle/run``). Needs tensorboard.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except Exception:
        return ("--llmcycle-tensorboard: the tensorboard package is not installed; scalars not exported", False)
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).timestamp()
    step = int(now)
    scalars = monitoring_scalars(results)
    try:
        writer = SummaryWriter(log_dir=str(logdir))
        try:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step, walltime=now)
            writer.add_text("llmcycle/run", _run_line(meta) or "(no run facts)", step, walltime=now)
        finally:
            writer.close()
    except Exception as e:  # an unwritable logdir: reported, never a failed run
        return (f"TensorBoard logdir {logdir} NOT written: {type(e).__name__}: {e}", True)
    return (f"exported {len(scalars)} scalar(s) to TensorBoard logdir {logdir}", False)


def export_wandb(project: str, results: Sequence["StageResult"], meta: dict) -> tuple[str, bool]:
    """One W&B run per pytest run in ``project``: :func:`monitoring_scalars` as one logged step
    (and so the run's summary), every row in a table (``llmcycle/stages``), the run facts as config.

    Offline unless ``WANDB_MODE`` says otherwise: the run is written under ``WANDB_DIR`` (default
    ``./wandb``) and nothing touches the network; ``wandb sync`` uploads it. Needs wandb.
    """
    try:
        import wandb  # an optional dependency, imported only when asked for: it loads slowly
    except Exception:
        return ("--llmcycle-wandb: the wandb package is not installed; nothing exported", False)
    scalars = monitoring_scalars(results)
    mode = os.environ.get("WANDB_MODE") or "offline"
    columns = ["test", "stage", "kind", "unit", "median_ms", "baseline_ms", "change", "verdict"]
    rows = [
        [r.nodeid, r.stage, r.kind, r.unit, r.median_ms, r.baseline.median_ms if r.baseline else None,
         r.verdict.change, r.outcome]
        for r in results
    ]
    try:
        run = wandb.init(
            project=project, job_type="llmcycle", config={k: v for k, v in meta.items() if v is not None},
            mode=mode, reinit="create_new",  # a run the user's tests left open stays theirs
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        try:
            run.log({**scalars, "llmcycle/stages": wandb.Table(columns=columns, data=rows)})  # also the summary
            where = str(Path(run.dir).parent)
        finally:
            run.finish()
    except Exception as e:  # no API key online, an unwritable WANDB_DIR: reported, never a failed run
        return (f"W&B run NOT written ({mode}): {type(e).__name__}: {e}", True)
    if mode == "offline":
        return (f"wrote offline W&B run {where} ({len(scalars)} scalar(s)); upload it with: wandb sync {where}", False)
    return (f"logged W&B run {run.id} to project {project} ({len(scalars)} scalar(s))", False)
