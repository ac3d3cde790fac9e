"""The counter policy (issue 12, must-have 2-4): defaults shown on planted changes, the policy's
text form and its errors, and how the one judging rule reads counters (what decided, stale
baselines, counters switched off), in the plugin and in ``llmcycle compare``.
"""
from __future__ import annotations

import pytest

from pytest_llmcycle import config
from pytest_llmcycle.engine import counts
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.engine.counts import DEFAULT_POLICY, OFF_POLICY, SEMANTICS_KEY, parse_policy

# ----------------------------------------------------------------------------- defaults from evidence


@pytest.fixture(scope="module")
def planted():
    """Counters of prefill and of one decode step of the hand-written GPT, for each planted change."""
    torch = pytest.importorskip("torch")
    from counters_gpt import REFACTORS, REGRESSIONS, Plant, TinyGPT

    from pytest_llmcycle.measure.counters import Counting, delta

    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))

    def run(plant):
        m = TinyGPT(plant=plant).eval()
        with torch.inference_mode(), Counting() as c:
            snaps = [c.snapshot()]
            m.generate(ids, 4, tick=lambda: snaps.append(c.snapshot()))
        return {"prefill": delta(snaps[0], snaps[1]), "decode": delta(snaps[1], snaps[-1], per=3)}

    out = {"base": run(Plant())}
    for name in REGRESSIONS + REFACTORS:
        out[name] = run(Plant(**{name: True}))
    return out


@pytest.mark.parametrize("change", ["manual_attention", "logits_fp64", "mlp_twice", "sampler_extra"])
def test_the_default_policy_catches_each_planted_regression(planted, change):
    for stage in ("prefill", "decode"):
        grew = counts.regressions(planted["base"][stage], planted[change][stage], DEFAULT_POLICY)
        assert grew, f"{change} not caught in {stage}: {planted[change][stage]} vs {planted['base'][stage]}"


@pytest.mark.parametrize("change", ["unsqueeze_roundtrip", "reshape_contiguous", "renamed", "reordered"])
def test_refactors_that_do_the_same_work_pass_the_default_policy(planted, change):
    for stage in ("prefill", "decode"):
        assert planted[change][stage] == planted["base"][stage]  # not even within tolerance: equal
        assert counts.compare(planted["base"][stage], planted[change][stage], DEFAULT_POLICY) == []


def test_the_bytes_tolerance_is_below_the_smallest_planted_change(planted):
    """Why alloc_bytes:1%: every planted regression moves bytes by more (the smallest, the sampler's
    unused sort, +1.7 % of prefill), and no refactor moves them at all."""
    moves = [
        planted[c][s]["alloc_bytes"] / planted["base"][s]["alloc_bytes"] - 1
        for c in ("manual_attention", "logits_fp64", "mlp_twice", "sampler_extra")
        for s in ("prefill", "decode")
    ]
    assert min(moves) > DEFAULT_POLICY.tolerance("alloc_bytes")


def test_manual_attention_costs_the_same_flops_and_is_caught_by_ops_and_bytes(planted):
    base, manual = planted["base"]["prefill"], planted["manual_attention"]["prefill"]
    assert manual["flops"] == base["flops"]
    names = {c.name for c in counts.regressions(base, manual, DEFAULT_POLICY)}
    assert names == {"aten_ops", "alloc_bytes"}


# ----------------------------------------------------------------------------- the policy's text


def test_policy_text_sets_each_counter_and_keeps_the_rest_at_their_default():
    p = parse_policy("flops:0, alloc_bytes:5%, aten_ops:off")
    assert (p.tolerance("flops"), p.tolerance("alloc_bytes"), p.tolerance("aten_ops")) == (0.0, 0.05, None)
    assert p.tolerance("peak_bytes") == DEFAULT_POLICY.tolerance("peak_bytes")
    assert parse_policy("alloc_bytes:0.05").tolerance("alloc_bytes") == 0.05
    assert parse_policy({"aten_ops": None, "flops": "exact"}).tolerance("aten_ops") is None
    assert parse_policy("true") == parse_policy(True) == DEFAULT_POLICY
    assert not parse_policy("false") and parse_policy("false") == OFF_POLICY
    assert not parse_policy("flops:off, aten_ops:off, alloc_bytes:off, peak_bytes:off")  # nothing gates: nothing counted
    assert str(DEFAULT_POLICY) == "flops:0, aten_ops:0, alloc_bytes:1%, peak_bytes:2%"


@pytest.mark.parametrize("text,says", [
    ("flops", "is not true, false or COUNTER:TOLERANCE; e.g. 'flops:0, alloc_bytes:5%, aten_ops:off'"),
    ("flop:0", "unknown counter 'flop'; the counters are flops, aten_ops, alloc_bytes, peak_bytes"),
    ("alloc_bytes:5", "did you mean alloc_bytes:5%?"),
    ("alloc_bytes:lots", "give off, 0 (exact), a percentage like 5% or a fraction like 0.05"),
])
def test_a_bad_policy_names_the_option_what_is_wrong_and_a_valid_example(text, says):
    with pytest.raises(config.SettingError) as e:
        config.convert("counters", text, "ini option llmcycle_counters")
    assert str(e.value).startswith(f"ini option llmcycle_counters={text!r} is not valid: ") and says in str(e.value)


def test_marker_command_line_and_ini_resolve_the_policy():
    s = config.resolve({"counters": "aten_ops:off"}, {"counters": "flops:off"})
    assert s.counters.tolerance("aten_ops") is None and s.counters.tolerance("flops") == 0.0  # command line beats ini
    s = config.for_marker(s, {"counters": "alloc_bytes:5%"}, "test_x")
    assert s.counters.tolerance("alloc_bytes") == 0.05
    assert not config.for_marker(s, {"counters": False}, "test_x").counters


# ----------------------------------------------------------------------------- the judging rule

SAMPLES = [10.0 + 0.01 * (i % 7) for i in range(30)]


def _case(base_counters, cur_counters, cur_samples=SAMPLES, policy=None, recording=False, unit="token"):
    return vd.Case(
        vd.Evidence(SAMPLES, unit, {}, base_counters),
        vd.Evidence(cur_samples, unit, {}, cur_counters),
        vd.Rules(confirmation=vd.CONFIRM_NOT_NEEDED, counters=policy, recording=recording),
    )


def _stamped(**c):
    return {**c, SEMANTICS_KEY: counts.SEMANTICS}


def test_a_counter_failure_leads_with_the_counter_and_says_time_did_not_decide():
    slower = [x * 1.11 for x in SAMPLES]
    v = vd.decide(_case(_stamped(flops=1000, aten_ops=10), _stamped(flops=1630, aten_ops=10), slower))
    assert v.outcome == vd.REGRESSED and v.decided_by == vd.BY_COUNTERS
    assert v.reason.startswith("failed on counters: flops +63.00% per token (1 kFLOP -> 1.63 kFLOP); time +11.0%, not judged on its own")


def test_a_counter_that_fell_is_improved_by_counters_and_says_so():
    slower = [x * 1.03 for x in SAMPLES]
    v = vd.decide(_case(_stamped(alloc_bytes=1000), _stamped(alloc_bytes=500), slower))
    assert v.outcome == vd.IMPROVED and v.decided_by == vd.BY_COUNTERS
    assert v.reason.startswith("improved on counters: alloc_bytes 0.5x per token") and "time +3.0%, not judged on its own" in v.reason


def test_the_policy_decides_which_counters_gate():
    base, cur = _stamped(aten_ops=93, alloc_bytes=1000), _stamped(aten_ops=94, alloc_bytes=1040)
    assert vd.decide(_case(base, cur)).outcome == vd.REGRESSED
    assert vd.decide(_case(base, cur, policy="aten_ops:off, alloc_bytes:5%")).outcome == vd.OK
    assert vd.decide(_case(base, cur, policy=False)).outcome == vd.OK


def test_counters_of_an_older_version_are_not_comparable_and_time_still_judges():
    old = {"flops": 1000, "aten_ops": 213}  # no stamp: counted by the rules before counted_by
    v = vd.decide(_case(old, _stamped(flops=1200, aten_ops=145)))
    assert v.outcome == vd.OK and v.decided_by == vd.BY_TIME and counts.STALE in v.reason
    assert "re-record with --llmcycle-update" in counts.STALE
    # recording rewrites them: the stage reads "new" so the update stores today's counters
    assert vd.decide(_case(old, _stamped(flops=1200), recording=True)).outcome == vd.NEW


def test_llmcycle_compare_judges_counters_by_the_policy_it_is_given(tmp_path):
    from pytest_llmcycle.compare import compare, load
    from pytest_llmcycle.storage.baseline import Baselines, entry_from_samples

    for name, ops in (("old.json", 93), ("new.json", 94)):
        b = Baselines(tmp_path / name)
        b.set_entry("cpu", "t.py::test_x", "prefill", entry_from_samples(SAMPLES, "call", None, {}, _stamped(aten_ops=ops, flops=10)))
        (tmp_path / name).write_text(b.dumps())
    old, new = load(str(tmp_path / "old.json")), load(str(tmp_path / "new.json"))
    assert [r.outcome for r in compare(old, new)] == [vd.REGRESSED]
    assert [r.outcome for r in compare(old, new, counters=parse_policy("aten_ops:off"))] == [vd.OK]
    assert compare(old, new)[0].verdict.reason.startswith("failed on counters: aten_ops +1.08% (93 -> 94)")


# ----------------------------------------------------------------------------- read right everywhere


def _counter_row():
    from pytest_llmcycle.run.results import StageResult
    from pytest_llmcycle.storage.baseline import entry_from_samples

    base = entry_from_samples(SAMPLES, "token", None, {}, _stamped(flops=1000, aten_ops=10))
    faster = [x * 0.6 for x in SAMPLES]
    v = vd.decide(_case(_stamped(flops=1000, aten_ops=10), _stamped(flops=1630, aten_ops=10), faster))
    return StageResult("t.py::test_x", "decode", "cpu", v, unit="token", median_ms=6.0, q1_ms=5.9, q3_ms=6.1, n=30,
                       baseline=base, samples_ms=faster, counters=_stamped(flops=1630, aten_ops=10))


def test_every_report_shows_the_counter_that_decided_in_its_row():
    """The issue's PR comment showed '-39.4% regressed' with no counter in it."""
    from pytest_llmcycle.reports import htmlpage, markdown
    from pytest_llmcycle.reports.terminal import failure_message, terminal_table

    r = _counter_row()
    assert r.outcome == vd.REGRESSED
    cell = "flops +63.00% per token; time -40.0%"
    assert cell in terminal_table([r])
    assert cell in markdown.table([r])
    assert cell in htmlpage.render([r], {})
    msg = failure_message([r]).splitlines()
    assert msg[0] == ("llmcycle: stage 'decode' regressed on cpu: failed on counters: flops +63.00% per token "
                      "(1 kFLOP -> 1.63 kFLOP); time -40.0%, not judged on its own (deterministic counters, no re-measure)")
    assert any(line.startswith("  change    -40.0%") and line.endswith("(time not judged on its own: counters decided)") for line in msg)


def test_the_html_strip_plot_of_a_counter_decided_row_is_not_drawn_as_a_time_failure():
    from pytest_llmcycle.reports import htmlpage

    r = _counter_row()
    page = htmlpage.render([r], {})
    assert "time did not decide: failed on counters: flops +63.00% per token" in page
    assert htmlpage.COLORS[vd.REGRESSED] not in htmlpage.strip_plot(r)


PLUGIN_TEST = '''
from pytest_llmcycle.measure.timing import Measurement

SAMPLES = {samples}


def test_mixed(llmcycle):
    m = Measurement(samples_ns=tuple(int(x * 1e6) for x in SAMPLES))
    llmcycle.record("fell", m, remeasure=lambda: m, counters={{"aten_ops": 5}})
    llmcycle.record("grew", m, remeasure=lambda: m, counters={{"aten_ops": 20}})


def test_leaner(llmcycle):
    m = Measurement(samples_ns=tuple(int(x * 1e6) for x in SAMPLES))
    llmcycle.record("fell", m, remeasure=lambda: m, counters={{"aten_ops": 5}})
'''


def test_the_summary_never_calls_a_failed_test_faster_and_names_counter_improvements(pytester):
    from pytest_llmcycle.engine.stats import summarize
    from pytest_llmcycle.storage.baseline import Entry, merge_into_file

    s = summarize(SAMPLES)
    entry = Entry(s.median, s.q1, s.q3, len(SAMPLES), tuple(SAMPLES), counters=_stamped(aten_ops=10))
    pytester.makepyfile(test_mixed=PLUGIN_TEST.format(samples=SAMPLES))
    pytester.makeini("[pytest]\nllmcycle_device_key = k\nllmcycle_machine_check = false\n")
    merge_into_file(pytester.path / "b.json", [("k", f"test_mixed.py::{t}", st, entry)
                                                for t, st in (("test_mixed", "fell"), ("test_mixed", "grew"), ("test_leaner", "fell"))])
    result = pytester.runpytest("--llmcycle-baseline", "b.json")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "test(s) faster" not in out
    result.stdout.fnmatch_lines(["llmcycle: 1 test(s) improved (time or counters) against their baseline; to record it: pytest test_mixed.py::test_leaner --llmcycle-update"])


def test_another_keys_counters_of_an_older_version_are_not_called_unchanged():
    case = vd.Case(
        None, vd.Evidence(SAMPLES, "call", {}, _stamped(flops=10)), vd.Rules(),
        counters_baseline=vd.Evidence(SAMPLES, "call", {}, {"flops": 10}), counters_key="cpu-ci",
    )
    v = vd.decide(case)
    assert v.outcome == vd.NEW and counts.STALE in v.reason and "unchanged" not in v.reason
