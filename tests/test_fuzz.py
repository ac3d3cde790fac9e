"""Hostile baseline files: truncated, mistyped, huge and hand-edited.

The loader's contract: a file is either refused with one clear ``BaselineError`` (naming the
file, on one line) or every entry in it is usable exactly as written, so a verdict computed
from it is a verdict on the file's numbers. Nothing else may escape, and nothing in a file is
ever executed. Paths given as options write where they say, and only there.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_llmcycle.storage import baseline as bl
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.storage.baseline import BaselineError, Baselines, Entry

PATH = Path("/nonexistent/llmcycle/baselines.json")
CURRENT = [10.0 + 0.01 * i for i in range(20)]


def good_file() -> str:
    b = Baselines(PATH)
    b.set_entry("cpu-x", "tests/test_a.py::test_y[1-é]", "forward", Entry(10.0, 9.9, 10.1, 40, (9.8, 9.9, 10.0, 10.1, 10.2)))
    b.set_entry("cpu-x", "tests/test_a.py::test_y[1-é]", "decode", Entry(1.0, 0.9, 1.1, 64, (0.9, 1.0, 1.1), unit="token", cold_ms=30.0))
    b.set_reference("cpu-x", Entry(2.0, 1.9, 2.1, 15, (1.9, 2.0, 2.1), extra={"workload": "matmul-mlp-v1-python"}))
    return b.dumps()


GOOD = good_file()


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(text: str, judged: int = 20) -> Baselines | None:
    """The property every input must satisfy; returns the loaded file when it was accepted."""
    try:
        b = Baselines.loads(text, PATH)
    except BaselineError as e:
        msg = str(e)
        assert str(PATH) in msg and "\n" not in msg, msg
        return None
    # Accepted: every time is a finite, positive number exactly as the file has it (no
    # coercion of strings or booleans), so the verdict judges the file's own numbers.
    raw = json.loads(text)
    for key, dev in raw.get("devices", {}).items():
        found = [("reference", None, dev["reference"])] if "reference" in dev else []
        found += [(n, s, e) for n, stages in dev.get("tests", {}).items() for s, e in stages.items()]
        for i, (nodeid, stage, data) in enumerate(found):
            e = b.reference(key) if stage is None else b.entry(key, nodeid, stage)
            assert is_number(data["median_ms"]) and e.median_ms == data["median_ms"]
            assert all(is_number(s) for s in data["samples_ms"])
            assert list(e.samples_ms) == [float(s) for s in data["samples_ms"]]
            assert all(math.isfinite(s) and s > 0 for s in e.samples_ms + (e.median_ms,))
            assert all(math.isfinite(q) and q >= 0 for q in (e.q1_ms, e.q3_ms))  # display only
            assert e.n >= 1 and isinstance(e.unit, str) and e.unit
            # the numbers the table shows fit the samples the gate judges (issue 15)
            tol = bl.CONSISTENCY_TOLERANCE
            lo, hi = min(e.samples_ms) * (1 - tol), max(e.samples_ms) * (1 + tol)
            assert lo <= e.median_ms <= hi and e.q1_ms <= e.median_ms * (1 + tol) and e.median_ms <= e.q3_ms * (1 + tol)
            assert all(lo <= m <= hi for m in bl.process_medians(e))
            if i < judged:  # a verdict per entry is costly; a few per device show the file is usable
                v = vd.judge(list(e.samples_ms), CURRENT, 0.10)
                assert v.outcome in vd.OUTCOMES
                assert v.ratio is not None and math.isfinite(v.ratio) and v.ratio > 0
    # and what it writes back is accepted again, unchanged
    again = b.dumps()
    assert Baselines.loads(again, PATH).dumps() == again
    return b


# ----------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=16,
)
ENTRY_KEYS = ["median_ms", "q1_ms", "q3_ms", "n", "samples_ms", "unit", "cold_ms", "env", "counters", "workload"]
extreme_numbers = st.one_of(
    st.sampled_from([0, -0.0, 5e-324, 1e-300, 1e-12, 1e12, 1e300, 1.7e308, 10**400, 2**63, True, False, "1.0", None]),
    st.floats(allow_nan=False),
)


def paths(obj, prefix=()):
    """Every (container, key) position in a parsed JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from paths(v, prefix + (i,))


GOOD_PATHS = list(paths(json.loads(GOOD)))


def dump_any(doc) -> str:
    # a hand-edited file may contain NaN/Infinity literals or huge integers: write them as-is
    try:
        return json.dumps(doc, allow_nan=True)
    except ValueError:  # an int too large to print: keep the literal digits
        return json.dumps(doc, allow_nan=True, default=str)


def replace_at(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


def delete_at(doc, path):
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    del target[path[-1]]
    return doc


# ----------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(GOOD)))
def test_every_truncation_of_a_good_file_is_refused_or_whole(cut):
    b = check(GOOD[:cut])
    if b is not None:  # only the full file (or it minus trailing whitespace) may be accepted
        assert GOOD[:cut].strip() == GOOD.strip()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GOOD_PATHS), st.one_of(json_values, extreme_numbers))
@example(("devices", "cpu-x", "tests", "tests/test_a.py::test_y[1-é]", "forward", "samples_ms", 0), 10**400)
@example(("devices", "cpu-x", "tests", "tests/test_a.py::test_y[1-é]", "forward", "q1_ms"), None)
@example(("devices", "cpu-x", "tests", "tests/test_a.py::test_y[1-é]", "forward", "samples_ms", 0), 5e-324)
@example(("devices", "cpu-x", "reference", "median_ms"), 1e-300)
def test_a_value_swapped_anywhere_is_refused_or_usable(path, value):
    check(dump_any(replace_at(json.loads(GOOD), path, value)))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(GOOD_PATHS))
def test_a_field_deleted_anywhere_is_refused_or_usable(path):
    check(dump_any(delete_at(json.loads(GOOD), path)))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(ENTRY_KEYS), st.one_of(json_values, extreme_numbers), max_size=8))
def test_a_hand_written_entry_is_refused_or_usable(entry):
    check(json.dumps({"schema": 1, "devices": {"cpu": {"tests": {"t.py::t": {"s": entry}}, "reference": entry}}}, default=str))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_document_is_refused_or_usable(doc):
    check(dump_any(doc))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_refused_or_usable(text):
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_bytes_spliced_into_the_file_on_disk_are_refused_or_usable(tmp_path_factory, at, junk):
    p = tmp_path_factory.mktemp("f") / "baselines.json"
    data = GOOD.encode()
    p.write_bytes(data[:at] + junk + data[at:])
    try:
        Baselines.load(p)
    except BaselineError as e:
        assert str(p) in str(e)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["forward", "decode"]),
    st.sampled_from(["median_ms", "q1_ms", "q3_ms"]),
    st.floats(0.01, 100.0),
    st.one_of(st.none(), st.lists(st.floats(0.01, 100.0), max_size=4)),
)
def test_an_edited_median_quartile_or_process_list_is_refused_or_fits_the_samples(stage, field, factor, medians):
    doc = json.loads(GOOD)
    entry = doc["devices"]["cpu-x"]["tests"]["tests/test_a.py::test_y[1-é]"][stage]
    entry[field] = entry[field] * factor
    if medians is not None:
        entry[bl.PROCESS_MEDIANS] = medians
    check(json.dumps(doc))  # check() asserts an accepted entry's numbers fit its samples


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.booleans(), st.text(max_size=12))
def test_line_endings_and_a_byte_order_mark_survive_a_round_trip_and_any_other_format_is_refused(crlf, bom, fmt):
    text = GOOD.replace("\n", "\r\n") if crlf else GOOD
    text = "\ufeff" + text if bom else text
    b = Baselines.loads(text, PATH)
    assert b.dumps() == text and b.raw == Baselines.loads(GOOD, PATH).raw
    doc = json.loads(GOOD)
    doc["format"] = fmt
    if fmt == bl.FORMAT:
        check(json.dumps(doc))
    else:
        with pytest.raises(bl.NotABaselineFile):
            Baselines.loads(json.dumps(doc), PATH)


# ----------------------------------------------------------------------------- hand edits


def test_a_huge_file_loads_or_is_refused_without_anything_else_escaping():
    deep = "[" * 100_000 + "]" * 100_000
    assert check('{"schema": 1, "devices": {"cpu": ' + deep + "}}") is None
    big_int = '{"schema": 1, "devices": {"cpu": {"tests": {"t": {"s": {"median_ms": 1' + "0" * 5000 + ', "samples_ms": [1]}}}}}}'
    assert check(big_int) is None
    many = Baselines(PATH)
    for i in range(3000):
        many.set_entry("cpu", f"t.py::test[{i}]", "forward", Entry(1.315, 1.158, 1.473, 64, tuple(1.0 + j / 100 for j in range(64))))
    assert check(many.dumps()) is not None


@pytest.mark.parametrize(
    "edit, fragment",
    [
        # a git merge conflict left in the file
        (lambda t: "<<<<<<< HEAD\n" + t + "=======\n" + t + ">>>>>>> branch\n", "merge conflict"),
        # two hand-merged copies of the same stage: which one wins would be silent
        (lambda t: t.replace('"forward": {', '"forward": {"median_ms": 99.0, "samples_ms": [99.0]},\n"forward": {', 1), "duplicate key 'forward'"),
        (lambda t: t.replace('"q1_ms": 9.9', '"q1_ms": null'), None),
        (lambda t: t.replace('"samples_ms": [9.8,', '"samples_ms": [1' + "0" * 400 + ","), "expected positive milliseconds"),
        (lambda t: t.replace('"samples_ms": [9.8,', '"samples_ms": [1e-320,'), "expected positive milliseconds"),
        (lambda t: t.replace('"samples_ms": [9.8,', '"samples_ms": [true,'), "has a sample True"),
        (lambda t: t.replace('"samples_ms": [9.8,', '"samples_ms": ["9.8",'), "has a sample '9.8'"),
        (lambda t: t.replace('"n": 40', '"n": 4.0'), "has n=4.0"),
    ],
)
def test_hand_edits_are_refused_clearly_or_read_as_written(edit, fragment):
    text = edit(GOOD)
    if fragment is None:  # allowed: a null quartile reads as "unknown", like a missing one
        b = check(text)
        assert b is not None
        assert b.entry("cpu-x", "tests/test_a.py::test_y[1-é]", "forward").q1_ms == 10.0
        return
    with pytest.raises(BaselineError) as e:
        Baselines.loads(text, PATH)
    assert fragment in str(e.value)
    check(text)


def test_loading_never_executes_what_the_file_contains(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    p = tmp_path / "baselines.json"
    p.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(BaselineError):
        Baselines.load(p)
    p.write_text(json.dumps({"schema": 1, "devices": {}, "__reduce__": ["os.mkdir", [str(marker)]], "!!python/object": "x"}))
    Baselines.load(p)
    assert not marker.exists()
    # and the module has no way to: JSON only, no pickle/yaml/eval
    source = Path(bl.__file__).read_text()
    assert not re.search(r"\b(pickle|marshal|yaml|shelve|eval|exec)\b", source)


@pytest.mark.timeout(20)
def test_a_baseline_that_is_not_a_regular_file_is_refused_before_anything_is_read(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(BaselineError, match="not a regular file"):
        Baselines.load(fifo)
    with pytest.raises(BaselineError, match="not a regular file"):
        Baselines.load(tmp_path)


# ----------------------------------------------------------------------------- paths


def entry_list(stage="forward"):
    return [("cpu", "t.py::t", stage, Entry(1.0, 1.0, 1.0, 3, (1.0, 1.0, 1.0)))]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_symlinked_baseline_is_updated_at_its_target_and_stays_a_link(tmp_path):
    shared = tmp_path / "shared"
    repo = tmp_path / "repo"
    shared.mkdir()
    (repo / ".llmcycle").mkdir(parents=True)
    target = shared / "baselines.json"
    bl.merge_into_file(target, entry_list("a"))
    link = repo / ".llmcycle" / "baselines.json"
    link.symlink_to(target)
    bl.merge_into_file(link, entry_list("b"))
    assert link.is_symlink() and os.readlink(link) == str(target)
    stages = Baselines.load(target).raw["devices"]["cpu"]["tests"]["t.py::t"]
    assert sorted(stages) == ["a", "b"]
    # the temp file lived next to the target, and nothing was left anywhere
    assert files_under(shared) == ["baselines.json"]
    assert files_under(repo) == [".llmcycle", ".llmcycle/baselines.json"]


def test_a_dangling_symlink_is_followed_to_create_its_target(tmp_path):
    link = tmp_path / "baselines.json"
    link.symlink_to(tmp_path / "elsewhere" / "real.json")
    bl.merge_into_file(link, entry_list())
    assert link.is_symlink()
    assert Baselines.load(tmp_path / "elsewhere" / "real.json").entry("cpu", "t.py::t", "forward") is not None


def test_dot_dot_in_a_baseline_option_is_collapsed_and_creates_no_stray_folders(pytester):
    pytester.makepyfile(
        """
        import time
        def test_a(llmcycle):
            llmcycle.measure("s", lambda: time.sleep(0.001))
        """
    )
    result = pytester.runpytest(
        "--llmcycle-baseline", "nothere/../out/b.json", "--llmcycle-update", "--llmcycle-device", "cpu",
        "--llmcycle-budget", "0.02", "--llmcycle-min-rounds", "3", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out" / "b.json").is_file()
    assert not (pytester.path / "nothere").exists()
    assert not [p for p in pytester.path.rglob("*.tmp")]


# ----------------------------------------------------------------------------- the verdict's shortcut

samples_st = st.sampled_from([0.01, 0.05, 0.4]).flatmap(lambda spread: st.lists(st.floats(1.0, 1.0 + spread), min_size=3, max_size=60))


@settings(max_examples=300, deadline=None)
@given(samples_st, samples_st, st.one_of(st.floats(0.97, 1.03), st.floats(0.6, 1.6)), st.sampled_from([0.02, 0.05, 0.1, 0.25]),
       st.sampled_from([None, 1.0, 1.08, 1.2, 2.0]))
def test_skipping_the_bootstrap_never_changes_a_verdict(base, cur, factor, threshold, machine):
    # verdict.judge/judge_cycle skip the bootstrap for a clearly-ok stage (bench/scale.py):
    # outcome, ratio, p-value and reason must be what the full computation says
    cur = [c * factor for c in cur]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vd, "_clearly_within", lambda *a: False)
        full = vd.judge(base, cur, threshold, 0.01, machine)
        full_cycle = vd.judge_cycle([base, cur], [cur, base], [1.0, 2.0], threshold, 0.01, machine)
    quick = vd.judge(base, cur, threshold, 0.01, machine)
    quick_cycle = vd.judge_cycle([base, cur], [cur, base], [1.0, 2.0], threshold, 0.01, machine)
    for q, f in ((quick, full), (quick_cycle, full_cycle)):
        assert (q.outcome, q.ratio, q.reason, q.effective_threshold) == (f.outcome, f.ratio, f.reason, f.effective_threshold)
        assert q.ci is None or q.ci == f.ci
    assert quick.p_value == full.p_value


# ----------------------------------------------------------------------------- JSON reports and the CLI (issue 15)
# What `llmcycle show/compare` read is held to the loader's contract: a JSON report is refused
# with one line naming the file (exit 2), or every stage row in it is usable exactly as written.
# The commands themselves never raise, and exit 1 only means "a stage regressed".

import contextlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402

from pytest_llmcycle import cli  # noqa: E402
from pytest_llmcycle.compare import SnapshotError, compare as compare_snapshots, load as load_snapshot  # noqa: E402
from pytest_llmcycle.reports.jsondoc import render as render_report  # noqa: E402
from pytest_llmcycle.run.results import StageResult  # noqa: E402


def good_report() -> str:
    rows = []
    for stage, center, unit in (("forward", 10.0, "call"), ("decode", 1.0, "token")):
        e = bl.entry_from_samples([center * (1 + 0.01 * ((i * 7) % 11 - 5)) for i in range(30)], unit, 3.0, {"threads": 1},
                                  {"flops": 100})
        rows.append(StageResult("tests/test_a.py::test_y[1-é]", stage, "cpu-x", vd.Verdict(vd.OK, 0.1, 0.1), unit=unit,
                                median_ms=e.median_ms, q1_ms=e.q1_ms, q3_ms=e.q3_ms, n=e.n, samples_ms=e.samples_ms,
                                cold_ms=3.0, env=dict(e.env), counters=dict(e.counters)))
    return render_report(rows, {"device_key": "cpu-x"})


GOOD_REPORT = good_report()
GOOD_REPORT_PATHS = list(paths(json.loads(GOOD_REPORT)))


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def check_report(folder: Path, text: str) -> None:
    """The contract for a JSON report, through the loader and through the commands."""
    path = folder / "report.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    good = folder / "good.json"
    good.write_text(GOOD_REPORT, encoding="utf-8")
    try:
        snap = load_snapshot(path)
    except SnapshotError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        for argv in (["show", path], ["compare", good, path]):
            code, out, err = run_cli(*argv)
            assert code == 2 and err.startswith("llmcycle: error:") and err.count("\n") == 1 and out == "", err
        return
    raw = json.loads(text)
    rows = [r for r in raw["results"] if r.get("kind", "stage") == "stage"]
    assert len(snap.entries) == len(rows)
    for r in rows:  # accepted: each stage's numbers are the file's own, finite and positive
        key = (r["device_key"], r["nodeid"], r["stage"])
        e = snap.entries[key]
        assert is_number(r["median_ms"]) and e.median_ms == r["median_ms"]
        assert all(is_number(s) for s in r["samples_ms"]) and list(e.samples_ms) == r["samples_ms"]
        assert all(math.isfinite(s) and s > 0 for s in e.samples_ms + (e.median_ms,))
        assert e.n >= 1 and isinstance(e.unit, str) and e.unit
        assert snap.thresholds[key] is None or 0 < snap.thresholds[key] < 1
    for v in compare_snapshots(load_snapshot(good), snap):
        assert v.outcome in vd.OUTCOMES + ("removed",)
    for argv in (["show", path], ["show", path, "--format", "json"], ["compare", good, path], ["compare", path, good, "--format", "markdown"]):
        code, out, err = run_cli(*argv)
        assert code in (0, 1) and err == "", err
        out.encode("utf-8")  # nothing unprintable reaches the terminal


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(GOOD_REPORT_PATHS), st.one_of(json_values, extreme_numbers))
@example(("results", 0, "median_ms"), "10.0")
@example(("results", 0, "samples_ms"), [])
@example(("results", 0), 1)
@example(("results", 0, "median_ms"), float("nan"))
@example(("results", 0, "verdict", "threshold"), 10**400)
@example(("results", 0, "counters", "flops"), 10**400)
def test_a_value_swapped_anywhere_in_a_report_is_refused_or_usable(tmp_path_factory, path, value):
    check_report(tmp_path_factory.mktemp("r"), dump_any(replace_at(json.loads(GOOD_REPORT), path, value)))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(GOOD_REPORT_PATHS))
@example(("results", 0, "nodeid"))
def test_a_field_deleted_anywhere_in_a_report_is_refused_or_usable(tmp_path_factory, path):
    check_report(tmp_path_factory.mktemp("r"), json.dumps(delete_at(json.loads(GOOD_REPORT), path)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(json_values, st.dictionaries(st.sampled_from(ENTRY_KEYS + ["nodeid", "stage", "device_key", "kind",
                                                                                      "verdict"]),
                                                         st.one_of(json_values, extreme_numbers), max_size=10)), max_size=3))
def test_any_rows_in_a_report_are_refused_or_usable(tmp_path_factory, rows):
    doc = {"format": "pytest-llmcycle-report", "schema": 1, "meta": {}, "results": rows}
    check_report(tmp_path_factory.mktemp("r"), dump_any(doc))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=len(GOOD_REPORT)))
def test_every_truncation_of_a_report_is_refused_or_whole(tmp_path_factory, cut):
    check_report(tmp_path_factory.mktemp("r"), GOOD_REPORT[:cut])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(GOOD_PATHS), st.one_of(json_values, extreme_numbers), st.booleans())
@example(("devices", "cpu-x", "tests", "tests/test_a.py::test_y[1-é]", "forward", "counters"), {"flops": 10**400}, False)
@example(("devices", "cpu-x", "tests"), {"t.py::x[\ud800]": {}}, False)
def test_every_command_refuses_or_handles_a_hostile_baseline_file(tmp_path_factory, path, value, dry_run):
    """show, compare and prune: exit 0/1 or one line with exit 2; a pruned file loads again."""
    folder = tmp_path_factory.mktemp("b")
    f = folder / "baselines.json"
    f.write_text(dump_any(replace_at(json.loads(GOOD), path, value)), encoding="utf-8")
    good = folder / "good.json"
    good.write_text(GOOD, encoding="utf-8")
    prune = ["prune", f, "--keep", "tests/test_a.py::test_y[1-é]"] + (["--dry-run"] if dry_run else [])
    for argv in (["show", f], ["compare", good, f], ["compare", f, f], prune):
        code, out, err = run_cli(*argv)
        assert code in (0, 1, 2) and (code != 1 or argv[0] == "compare"), (argv, err)
        assert (code == 2) == bool(err), err
        if code == 2:
            assert err.startswith("llmcycle: error:") and err.count("\n") == 1, err
        out.encode("utf-8")
    if run_cli("show", f)[0] == 0:
        Baselines.load(f)  # what prune left is still a valid file
    shutil.rmtree(folder)
