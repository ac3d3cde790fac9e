"""The ``llmcycle`` command (also ``python -m pytest_llmcycle``): show, compare, prune, history.

Exit codes follow the plugin: 0 ok, 1 a stage regressed, 2 a usage error (bad arguments, a file
that cannot be read or is refused: what it reads is validated as the plugin validates it), 3 an
internal error (one line, no traceback), 130 interrupted. ``prune`` changes every file or none. Imports only the standard library and the option table (``config``, pure
Python) at module level; each command imports what it needs.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import OPTION, SettingError, convert

OK, REGRESSION, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """A problem the user fixes by changing the command; printed as ``llmcycle: error: ...``."""


def _print_rows(rows: list, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "markdown":
        from .reports.markdown import table

        print(table(rows), file=out)
    else:
        from .reports.terminal import terminal_table

        print(terminal_table(rows), file=out)


# --------------------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from .compare import SnapshotError, load
    from .reports.escape import md_text, visible
    from .reports.terminal import fmt_ms, simple_table

    try:
        snap = load(args.file)
    except SnapshotError as e:
        raise UsageError(str(e)) from None
    rows = []
    for (dk, nodeid, stage), e in sorted(snap.entries.items()):
        if args.device_key and dk != args.device_key:
            continue
        if args.test and args.test not in nodeid:
            continue
        unit = "" if e.unit == "call" else f"/{e.unit}"
        env = ", ".join(f"{k} {e.env[k]}" for k in ("threads", "torch", "dtype") if k in e.env)
        rows.append([dk, nodeid, stage, fmt_ms(e.median_ms) + unit, f"{fmt_ms(e.q1_ms)} .. {fmt_ms(e.q3_ms)}", str(e.n),
                     fmt_ms(e.cold_ms), env])
    if args.format == "json":
        # each key as its own fields, never joined: node ids and stage names may hold spaces
        keep = {(r[0], r[1], r[2]) for r in rows}
        doc = {
            "file": str(snap.path),
            "kind": snap.kind,
            "entries": [{"device_key": dk, "nodeid": n, "stage": s, "entry": e.to_json()}
                        for (dk, n, s), e in sorted(snap.entries.items()) if (dk, n, s) in keep],
            "references": {dk: e.to_json() for dk, e in sorted(snap.references.items())
                           if not args.device_key or dk == args.device_key},
        }
        print(json.dumps(doc, indent=1, sort_keys=True))
        return OK
    headers = ["device key", "test", "stage", "median", "IQR", "n", "cold", "environment"]
    if args.format == "markdown":
        from .reports.markdown import cell

        print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
        for r in rows:
            print("| " + " | ".join(cell(c) for c in r) + " |")
    else:
        print(simple_table(rows, headers))
    refs = ", ".join(f"{k} {fmt_ms(e.median_ms)}" for k, e in sorted(snap.references.items()))
    tail = f"{len(rows)} stage(s) in {snap.path} ({snap.kind})" + (f"; reference workload: {refs}" if refs else "")
    print("\n" + (md_text(tail) if args.format == "markdown" else visible(tail)))
    return OK


# --------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import REMOVED, SnapshotError, compare, exit_code, load, shared_device_keys, to_json
    from .reports.escape import md_text, visible

    def say(text: str) -> None:  # keys, ids and stage names from the files: shown, never obeyed
        print(f"\n{md_text(text)}" if args.format == "markdown" else visible(text))  # Markdown: its own paragraph

    try:
        old, new = load(args.old), load(args.new)
    except SnapshotError as e:
        raise UsageError(str(e)) from None
    rows = compare(old, new, args.threshold, args.alpha, args.device_key, counters=args.counters)
    code = exit_code(rows, args.strict)
    if args.format == "json":
        print(to_json(rows, old=str(old.path), new=str(new.path), exit_code=code), end="")
        return code
    shown = [r for r in rows if r.outcome != REMOVED]
    if shown:
        _print_rows(shown, args.format)
    removed = [r for r in rows if r.outcome == REMOVED]
    for r in removed:
        say(f"only in {old.path}: {r.device_key} {r.nodeid} {r.stage}")
    shared = shared_device_keys(old, new)
    ignored = sorted(({k for k, _, _ in old.entries} | {k for k, _, _ in new.entries}) - shared) if shared else []
    if ignored and not args.device_key:
        say(f"llmcycle: device keys in only one file, not compared: {', '.join(ignored)}")
    common = sum(1 for r in rows if r.baseline is not None and r.outcome != REMOVED)
    if not common:
        keys_old = sorted({k for k, _, _ in old.entries}) or ["none"]
        keys_new = sorted({k for k, _, _ in new.entries}) or ["none"]
        say(f"llmcycle: no stage is in both files (device keys {', '.join(keys_old)} vs {', '.join(keys_new)})")
    from .reports.terminal import outcome_counts

    counts = ", ".join(f"{n} {o}" for o, n in outcome_counts(shown).items()) or "nothing compared"
    print(f"\n{counts}; exit code {code}")
    return code


# --------------------------------------------------------------------------- prune


def collect_nodeids(rootdir: Path, pytest_args: str) -> set[str]:
    """Node ids pytest collects now (``pytest --collect-only -q``), run in ``rootdir``."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *shlex.split(pytest_args)]
    proc = subprocess.run(cmd, cwd=rootdir, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 5):  # 5: no tests collected
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise UsageError(f"collecting tests failed (pytest exit code {proc.returncode}); nothing pruned:\n{tail}")
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")}


def cmd_prune(args: argparse.Namespace) -> int:
    path = Path(args.baseline)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
        files = sorted(path.glob("*.json")) if is_dir else [path]
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read it ({e})") from None
    if is_dir and not files:
        raise UsageError(f"{path}: a folder with no .json baseline files")
    if not (is_dir or is_file):
        raise UsageError(f"{path}: no such baseline file")
    keep: set[str] = set(args.keep or [])
    if args.keep_from:
        try:
            text = sys.stdin.read() if args.keep_from == "-" else Path(args.keep_from).read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise UsageError(f"--keep-from {args.keep_from}: cannot read it ({e}); nothing pruned") from None
        keep |= {line.strip() for line in text.splitlines() if "::" in line}
    if args.collect:
        keep |= collect_nodeids(Path(args.rootdir or "."), args.pytest_args)
    if not keep:
        raise UsageError("no test ids to keep (use --collect, --keep or --keep-from); refusing to remove every entry")
    _prune_files(files, keep, args)
    return OK


def _prune_files(files: list[Path], keep: set, args: argparse.Namespace) -> None:
    """All or nothing: every file is locked, read and validated, and every new version written
    to a temp file next to its file, before the first one replaces its file; "removed" is
    printed only for what was written."""
    import os
    from contextlib import ExitStack

    from .reports.escape import visible
    from .storage.baseline import BaselineError, Baselines, NotABaselineFile, baseline_lock

    plans = []
    with ExitStack() as held:
        try:
            # the lock is the file's folder: one per folder, taken in path order (two prunes agree)
            folders = {str(Path(os.path.realpath(f)).parent): f for f in reversed(files)}
            for folder in sorted(folders):
                held.enter_context(baseline_lock(folders[folder]))
        except (BaselineError, OSError) as e:
            raise UsageError(f"{e} (nothing pruned)") from None
        for f in files:
            try:
                b = Baselines.load(f)
            except NotABaselineFile as e:
                if len(files) == 1:
                    raise UsageError(str(e)) from None
                print(visible(f"llmcycle: skipped {e}"))  # another tool's file in the folder: left alone
                continue
            except BaselineError as e:
                raise UsageError(f"{e} (nothing pruned)") from None
            gone = sorted(
                (dk, nodeid)
                for dk, dev in b.devices().items()
                if not args.device_key or dk == args.device_key
                for nodeid in dev.get("tests", {})
                if nodeid not in keep
            )
            lines = [f"{dk} {nodeid} ({', '.join(sorted(b.devices()[dk]['tests'][nodeid]))})" for dk, nodeid in gone]
            for dk, nodeid in gone:
                b.remove_test(dk, nodeid)
            plans.append((f, b, lines))
        if not args.dry_run:
            _replace_all([(f, b.dumps()) for f, b, lines in plans if lines])
    verb = "would remove" if args.dry_run else "removed"
    for f, _, lines in plans:
        for line in lines:
            print(visible(f"{verb}: {line}"))
        print(visible(f"llmcycle: {verb} {len(lines)} test entr{'y' if len(lines) == 1 else 'ies'} from {f}"))


def _replace_all(texts: list[tuple[Path, str]]) -> None:
    """Write every file or none: each new text goes to a temp file next to its file (named as
    ``storage.baseline.atomic_write_text`` names them, so a killed prune's are cleaned up), and
    only when all are on disk do they replace their files."""
    import os
    import tempfile

    from .storage.baseline import write_problem

    staged: list[tuple[str, Path]] = []
    try:
        for path, text in texts:
            real = Path(os.path.realpath(path))
            problem = write_problem(real, check_name=False)
            if problem:
                raise UsageError(f"{problem}; nothing pruned")
            fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.{os.getpid()}.", suffix=".tmp", dir=real.parent)
            staged.append((tmp, real))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, real.stat().st_mode & 0o777)
    except BaseException as e:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {path}: {e.strerror or e}; nothing pruned") from None
        if isinstance(e, UnicodeEncodeError):
            raise UsageError(f"cannot write {path}: it holds text that is not valid Unicode (a lone surrogate); nothing pruned") from None
        raise
    done: list[Path] = []
    for tmp, real in staged:
        try:
            os.replace(tmp, real)
        except OSError as e:  # the folders took a temp file a moment ago: this is next to impossible
            for t, _ in staged[len(done):]:
                try:
                    os.unlink(t)
                except OSError:
                    pass
            pruned = ", ".join(map(str, done)) or "none"
            raise UsageError(f"cannot replace {real}: {e.strerror or e}; pruned: {pruned}; not pruned: the rest") from None
        done.append(real)


# --------------------------------------------------------------------------- history


def cmd_history(args: argparse.Namespace) -> int:
    from .storage.history import HistoryError, SQLiteHistory
    from .reports.terminal import fmt_ms, simple_table, trend_sparkline

    path = Path(args.db)
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise UsageError(f"{str(path)!r}: not a usable path ({e})") from None
    if not is_file:
        raise UsageError(f"{path}: no such history file (pytest --llmcycle-history {path} creates it)")
    store = SQLiteHistory(path)  # read-only: a file that is not a history is refused unchanged
    import sqlite3

    try:
        keys = store.keys()
    except HistoryError as e:
        raise UsageError(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise UsageError(f"{path}: not a history file ({e})") from None
    rows = []
    for dk, nodeid, stage in keys:
        if (args.device_key and dk != args.device_key) or (args.test and args.test not in nodeid) or (args.stage and args.stage != stage):
            continue
        points = [p for p in store.series(nodeid, stage, dk) if p.median_ms is not None][-args.last:]
        if not points:
            continue
        unit = "" if points[-1].unit == "call" else f"/{points[-1].unit}"
        first, last = points[0].median_ms, points[-1].median_ms
        change = f"{(last / first - 1) * 100:+.1f}%" if first else "-"
        rows.append([dk, nodeid, stage, str(len(points)), fmt_ms(first) + unit, fmt_ms(last) + unit, change,
                     trend_sparkline([p.median_ms for p in points]), points[-1].outcome or "-"])
    print(simple_table(rows, ["device key", "test", "stage", "runs", "first", "last", "change", "trend", "last verdict"]))
    return OK


# --------------------------------------------------------------------------- entry point


def _setting(name: str):
    """An argparse type for a plugin setting: the plugin's own converter and check (config.OPTIONS),
    so ``llmcycle compare --threshold 10`` is refused as ``--llmcycle-threshold=10`` is."""

    def parse(text: str):
        try:
            return convert(name, text, name)
        except SettingError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {e.reason}") from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmcycle",
        description="Inspect, compare and maintain pytest-llmcycle baseline files, JSON reports and history.",
        epilog="exit codes: 0 ok, 1 a stage regressed (compare), 2 usage error or a refused file, 3 internal error, 130 interrupted",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    fmt = dict(choices=["table", "markdown", "json"], default="table", help="output format (default: table)")

    s = sub.add_parser("show", help="show a baseline file or JSON report as a table",
                       description="Show every stored stage of a baseline file or a JSON report (--llmcycle-report x.json).")
    s.add_argument("file", help="baseline file (.llmcycle/baselines.json), folder of per-module baseline files, or JSON report")
    s.add_argument("--device-key", help="only this device key")
    s.add_argument("--test", help="only tests whose node id contains this text")
    s.add_argument("--format", **fmt)
    s.set_defaults(func=cmd_show)

    c = sub.add_parser(
        "compare", help="judge NEW's stages against OLD's (exit 1 on a regression)",
        description="Judge each stage in NEW against the same stage in OLD with the plugin's verdict engine "
        "(threshold, Mann-Whitney U, bootstrap interval, machine-speed normalisation when both files carry a "
        "reference workload). Each file is a baseline file or a JSON report, e.g. artifacts of main and of a PR.",
        epilog="exit codes: 0 no regression, 1 a stage regressed, 2 usage error",
    )
    c.add_argument("old", help="the reference: baseline file, folder of per-module files, or JSON report (e.g. from main)")
    c.add_argument("new", help="the candidate: baseline file, folder of per-module files, or JSON report (e.g. from the PR)")
    c.add_argument("--threshold", type=_setting("threshold"), default=None, metavar="FRACTION",
                   help="slowdown that fails a stage, as a fraction (default: each test's own from a JSON report, "
                   f"else {OPTION['threshold'].default:.2f})")
    c.add_argument("--alpha", type=_setting("alpha"), default=OPTION["alpha"].default, metavar="P",
                   help=f"significance level, at most 0.5 (default: {OPTION['alpha'].default})")
    c.add_argument("--device-key", help="only this device key")
    c.add_argument("--counters", type=_setting("counters"), default=OPTION["counters"].default, metavar="POLICY",
                   help="which counters gate and how tightly, as the plugin's --llmcycle-counters / llmcycle_counters, "
                   "e.g. 'flops:0, alloc_bytes:5%%, aten_ops:off' (default: flops:0, aten_ops:0, alloc_bytes:1%%, peak_bytes:2%%)")
    c.add_argument("--strict", action="store_true", help="also fail (exit 1) stages with no comparable old entry")
    c.add_argument("--format", **fmt)
    c.set_defaults(func=cmd_compare)

    pr = sub.add_parser(
        "prune", help="remove entries of tests that no longer exist",
        description="Remove baseline entries whose test no longer exists. Tests to keep come from collecting "
        "(--collect runs pytest --collect-only -q) and/or node ids given. Prints what it removes; --dry-run "
        "only prints. The file is rewritten atomically.",
    )
    pr.add_argument("baseline", help="baseline file (e.g. .llmcycle/baselines.json) or a folder of per-module files")
    pr.add_argument("--collect", action="store_true", help="keep the tests that pytest collects now")
    pr.add_argument("--pytest-args", default="", help="extra arguments for the collecting pytest, e.g. 'tests/'")
    pr.add_argument("--rootdir", help="where to run the collecting pytest (default: the working folder)")
    pr.add_argument("--keep", action="append", metavar="NODEID", help="a test node id to keep (repeatable)")
    pr.add_argument("--keep-from", metavar="FILE", help="file of node ids to keep, one a line ('-': stdin)")
    pr.add_argument("--device-key", help="prune only this device key's entries")
    pr.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    pr.set_defaults(func=cmd_prune)

    h = sub.add_parser("history", help="trend of each stage from a history file",
                       description="Per stage, the median over the runs stored by pytest --llmcycle-history PATH.")
    h.add_argument("db", help="history file (SQLite)")
    h.add_argument("--test", help="only tests whose node id contains this text")
    h.add_argument("--stage", help="only this stage")
    h.add_argument("--device-key", help="only this device key")
    h.add_argument("--last", type=int, default=20, help="runs per stage to show (default: 20)")
    h.set_defaults(func=cmd_history)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 ok, 1 regressed (compare), 2 usage error or a file that is
    refused, 3 an internal error (a bug: one line, never a traceback, and never 1, which a CI
    job would read as a regression), 130 interrupted (Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .reports.escape import visible

    try:
        return args.func(args)
    except UsageError as e:
        print(visible(f"llmcycle: error: {e}", keep="\n"), file=sys.stderr)  # messages quote files and keys
        return USAGE
    except BrokenPipeError:  # `llmcycle show ... | head`
        return OK
    except KeyboardInterrupt:
        print("llmcycle: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # the last resort: every input problem above has its own message
        print(visible(f"llmcycle: internal error: {type(e).__name__}: {e} (please report it)"), file=sys.stderr)
        return INTERNAL


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
