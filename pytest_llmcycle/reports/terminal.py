"""Rendering only, from StageResult records: the terminal table with its numbered notes (why a
row was not judged, a stage past twice its baseline), the summary lines, the line a timed run
starts with, and failure messages."""
from __future__ import annotations

import shlex
from typing import Iterable, Sequence

from ..engine import verdict as vd
from .escape import visible
from ..storage.baseline import process_medians
from ..run.results import COLD, CYCLE, STAGE, StageResult

_ORDER = {o: i for i, o in enumerate(vd.OUTCOMES)}


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 999.5:  # thresholds at the rounding edge: 0.9996 ms prints as "1 ms", not "1e+03 us"
        return f"{ms / 1000:.3g} s"
    if ms >= 0.9995:
        return f"{ms:.3g} ms"
    return f"{ms * 1000:.3g} us"


def fmt_change(v: vd.Verdict) -> str:
    if v.change is None:
        return "-"
    return f"{v.change * 100:+.1f}%"


def change_cell(v: vd.Verdict) -> str:
    """A row's change: the time's, led by the counters when they decided the row
    ("flops +63.00% per token; time -39.4%")."""
    from ..engine.counts import decided_part

    part = decided_part(v.reason) if v.decided_by == vd.BY_COUNTERS else ""
    return f"{part}; time {fmt_change(v)}" if part else fmt_change(v)


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}"


def sort_rows(results: Iterable[StageResult]) -> list[StageResult]:
    """Regressions first; a test's rows stay together in measured order within a group."""
    results = list(results)
    worst: dict[str, int] = {}
    for r in results:
        worst[r.nodeid] = min(worst.get(r.nodeid, 99), _ORDER.get(r.outcome, 98))
    first_seen = {}
    for i, r in enumerate(results):
        first_seen.setdefault(r.nodeid, i)
    return sorted(results, key=lambda r: (worst[r.nodeid], first_seen[r.nodeid]))


def verdict_cell(r: StageResult) -> str:
    text = r.outcome
    if r.kind == COLD:
        text = "not gated"
    if r.updated:
        text += " (updated)"
    if r.test_failed:
        text += " (test failed)"
    if r.verdict.normalised:
        text += " *"
    return text


#: outcomes that pass without having been judged against a baseline: each such row carries a note
NOT_JUDGED = (vd.INCONCLUSIVE, vd.NOT_COMPARABLE, vd.NEW)


def not_judged(results: Iterable[StageResult]) -> list[StageResult]:
    """The gated rows (stages and cycles) that passed without a verdict on their time."""
    return [r for r in results if r.kind != COLD and r.outcome in NOT_JUDGED]


_MACHINE_FAR = "inconclusive (machine)"  # reason keys read "<outcome>: <reason>", so this one is apart


def notes(results: Sequence[StageResult]) -> tuple[dict[int, int], list[tuple[str, int]]]:
    """Numbered notes for the table: ``({id(row): number}, [(text, rows), ...])``.

    Every not-judged row gets the reason it was not judged; rows that share one reason share
    one note (stages left unjudged because the machine read far off its recorded speed share
    one, whatever each stage's own factor). A row whose median reads past twice its baseline's
    gets its warning too.
    """
    keys: dict[int, str] = {}
    machine: dict[str, list[float]] = {}
    for r in results:
        v = r.verdict
        if r.kind == COLD:
            continue
        if r.outcome in NOT_JUDGED:
            if r.outcome == vd.INCONCLUSIVE and vd.machine_off(v.machine_factor):
                keys[id(r)] = _MACHINE_FAR
                machine.setdefault(_MACHINE_FAR, []).append(v.machine_factor)  # type: ignore[arg-type]
            else:
                keys[id(r)] = f"{r.outcome}: {v.reason}" if v.reason else r.outcome
        elif r.warning:
            keys[id(r)] = f"warning: {r.warning}"
    numbers: dict[str, int] = {}
    counts: dict[str, int] = {}
    for r in sort_rows(results):  # numbered in table order
        k = keys.get(id(r))
        if k is not None:
            numbers.setdefault(k, len(numbers) + 1)
            counts[k] = counts.get(k, 0) + 1
    texts = {k: ("inconclusive: " + vd.machine_far_note(machine[k])) if k in machine else k for k in numbers}
    return {i: numbers[k] for i, k in keys.items()}, [(texts[k], counts[k]) for k in numbers]


def table_rows(results: Sequence[StageResult], numbered: dict[int, int] | None = None) -> list[list[str]]:
    """The table's cells; with ``numbered`` (see :func:`notes`) a "note" column before the verdict holds [n]."""
    rows = []
    for r in sort_rows(results):
        unit = "" if r.unit == "call" else f"/{r.unit}"
        row = [
            r.nodeid,
            r.label,
            fmt_ms(r.baseline.median_ms if r.baseline else None) + (unit if r.baseline else ""),
            fmt_ms(r.median_ms) + unit,
            change_cell(r.verdict),
            verdict_cell(r),
        ]
        if numbered is not None:
            n = numbered.get(id(r))
            row.insert(5, f"[{n}]" if n else "")
        rows.append(row)
    return rows


HEADERS = ["test", "stage", "baseline", "current", "change", "verdict"]
#: with notes, the note column sits before the verdict, so each row still ends in its verdict
NOTE_HEADERS = HEADERS[:5] + ["note"] + HEADERS[5:]


def terminal_table(results: Sequence[StageResult]) -> str:
    """The table, and below it one numbered line per reason a row was not judged (or warned)."""
    numbered, texts = notes(results)
    if not texts:
        return simple_table(table_rows(results), HEADERS)
    lines = [simple_table(table_rows(results, numbered), NOTE_HEADERS)]
    for i, (text, count) in enumerate(texts, 1):
        lines.append(visible(f"[{i}] {text}" + (f" ({count} rows)" if count > 1 else "")))
    return "\n".join(lines)


def not_judged_line(results: Sequence[StageResult], strict_all: bool = False) -> str:
    """The summary line that counts the rows passed without a verdict, with their reasons."""
    rows = not_judged(results)
    if not rows:
        return ""
    numbered, texts = notes(rows)
    why = "; ".join(t for t, _ in texts) if len(texts) <= 2 else f"{len(texts)} reasons, see the notes above"
    hint = "" if strict_all else " (--llmcycle-strict-all fails them)"
    return visible(f"llmcycle: {len(rows)} stage{'s' if len(rows) != 1 else ''} not judged: {why}{hint}")


def warning_lines(results: Sequence[StageResult]) -> list[str]:
    """One line per row reading more than twice its baseline: never a plain pass."""
    return [visible(f"llmcycle: WARNING {r.nodeid} {r.label} {r.warning}") for r in sort_rows(results) if r.warning]


def refusal_lines(refused: Sequence[tuple[str, float]], update_all: bool) -> list[str]:
    """What --llmcycle-update did not store because the machine read far off its stored reference."""
    if not refused:
        return []
    factors = [m for _, m in refused]
    ids = sorted({n for n, _ in refused})
    flag = "--llmcycle-update-all" if update_all else "--llmcycle-update"
    force = visible(f"pytest {' '.join(shlex.quote(n) for n in ids)} {flag} --llmcycle-update-force")
    return [
        visible(
            f"llmcycle: NOT written: the stages of {len(ids)} test(s) ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}): "
            + vd.machine_far_note(factors, "so not recorded")
        ),
        f"  record again on a quiet machine, or store these numbers anyway: {force}",
    ]


def run_header(
    baseline: str, exists: bool | None, device_key: str, threads: int, threshold: float, mode: str
) -> str:
    """The line a timed run starts with: which file, which key, how it is judged."""
    where = baseline + ("" if exists is None or exists else " (not found: every stage is new)")
    return visible(
        f"llmcycle: baseline {where}, device key {device_key}, {threads} thread(s), "
        f"threshold {threshold * 100:g}%, mode {mode}"
    )


def run_mode(settings) -> str:
    """How this run treats the baselines, as the header says it."""
    if settings.update:
        mode = "append" if settings.update_append else "record all" if settings.update_all else "record"
        return mode + (" (forced)" if settings.update_force else "")
    return "check" + (", strict-all" if settings.strict_all else ", strict" if settings.strict else "")


def simple_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A left-aligned text table, the layout of ``tabulate(..., tablefmt="simple")``.

    Control characters in cells are shown as escapes (``\\x1b``, ``\\n``): a node id or a
    device key read from a file cannot move the cursor, retitle the terminal or forge a row.
    Cells are stripped, a column is as wide as its widest cell (at least its header plus
    two), columns are two spaces apart and lines carry no trailing blanks. Written out here
    because tabulate's type sniffing cost ~90 ms at 4,500 rows; the test suite checks the
    output against tabulate's on random tables.
    """
    cells = [[visible(c).strip() for c in row] for row in rows]
    widths = [max([len(h) + 2] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "  ".join([c.ljust(w) for c, w in zip(row, widths)]).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in cells])


def accept_command(nodeids: Iterable[str]) -> str:
    """The command that records new baselines for ``nodeids``, on one line: a terminal, a
    Markdown code block and a failure message print it, so controls in an id are shown escaped."""
    ids = " ".join(shlex.quote(n) for n in sorted(set(nodeids)))
    return visible(f"pytest {ids} --llmcycle-update")


def failure_message(rows: Sequence[StageResult], against: str | None = None) -> str:
    """The failing test's message: one block per failing row, then the command to accept.

    ``against``: the base a ``--llmcycle-against`` run judged against ("origin/main @ 1a2b3c4"):
    the rows then say "against" it, its numbers are the base's, and there is nothing to accept.
    """
    out = []
    for r in rows:
        v = r.verdict
        unit = "" if r.unit == "call" else f" per {r.unit}"
        if v.outcome in (vd.NEW, vd.NOT_COMPARABLE):
            out.append(
                f"llmcycle: stage {r.stage!r} on {r.device_key} has no usable baseline "
                f"({v.outcome}: {v.reason}) and --llmcycle-strict is set"
            )
            continue
        if v.outcome == vd.INCONCLUSIVE:
            what = "cycle" if r.kind == CYCLE else f"stage {r.stage!r}"
            out.append(
                f"llmcycle: {what} on {r.device_key} was not judged ({v.outcome}: {v.reason}) "
                "and --llmcycle-strict-all is set"
            )
            continue
        what = "cycle" if r.kind == CYCLE else f"stage {r.stage!r}"
        head = f"llmcycle: {what} regressed against {against}" if against else f"llmcycle: {what} regressed on {r.device_key}"
        b = r.baseline
        by_counters = v.decided_by == vd.BY_COUNTERS and b is not None
        # what decided leads: "failed on counters: flops +63.00% per token (...); time +11.0%, not judged on its own"
        out.append(f"{head}: {v.reason}" if by_counters else head)
        if b is None and v.reason:  # no baseline here: another device key's counters decided it
            out.append(f"  counters  {v.reason}")
        if by_counters and r.counters:
            from ..engine.counts import SEMANTICS_KEY, counter_lines

            # judged comparable: the current counters carry the baseline's stamp (a live run's are unstamped)
            cur = {**r.counters, SEMANTICS_KEY: b.counters.get(SEMANTICS_KEY, 1)}
            out.extend(line for line in counter_lines(b.counters, cur, r.unit) if line.split()[1].rstrip(":") in v.reason)
        if b is not None:
            spread = f" (IQR {fmt_ms(b.q1_ms)} .. {fmt_ms(b.q3_ms)}, n={b.n})" if r.kind != CYCLE else ""
            medians = process_medians(b)
            if len(medians) > 1 and v.gate == "processes":
                spread += f"; recorded in {len(medians)} processes, medians {fmt_ms(min(medians))} .. {fmt_ms(max(medians))}"
            out.append(f"  {'base    ' if against else 'baseline'}  {fmt_ms(b.median_ms)}{unit}{spread}")
        spread = f" (IQR {fmt_ms(r.q1_ms)} .. {fmt_ms(r.q3_ms)}, n={r.n})" if r.kind != CYCLE else ""
        remeasure = f"; first measurement {v.first_ratio - 1:+.1%}, confirmed by a re-measure" if v.first_ratio else ""
        out.append(f"  current   {fmt_ms(r.median_ms)}{unit}{spread}{remeasure}")
        ci = f" (95% CI {v.ci[0] - 1:+.1%} .. {v.ci[1] - 1:+.1%})" if v.ci else ""
        test = "paired rounds" if against else "Mann-Whitney U" if r.kind != CYCLE else "bootstrap"
        conf = f", {test} p={fmt_p(v.p_value)} (confidence {v.confidence:.2%})" if v.p_value is not None else ""
        thr = f"threshold {v.threshold * 100:g}%"  # not :.0%, which shows 2.5 % as 2 %
        if v.effective_threshold > v.threshold:
            why = (
                "the baseline's recording processes differ; it fails past the slowest of them + the threshold"
                if v.gate == "processes"
                else "the stage's own noise is wider"
            )
            thr += f" (gated at {v.effective_threshold:.1%}: {why})"
        out.append(f"  change    {fmt_change(v)}{ci}, {thr}{conf}" + (" (time not judged on its own: counters decided)" if by_counters else ""))
        if v.machine_factor is not None:
            out.append(f"  machine   {vd.machine_note(v.machine_factor)}")
    if against:
        out.append(f"  this change against its base ({against}); the base and this checkout took turns on this machine")
    else:
        out.append(f"  to accept the new numbers: {accept_command(r.nodeid for r in rows)}")
    # device keys, reasons and counter names can come from a baseline file: one line each, shown
    return "\n".join(visible(line) for line in out)


# --------------------------------------------------------------------------- shared by the report files

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], lo: float | None = None, hi: float | None = None, bins: int = 10) -> str:
    """A histogram of ``values`` over [lo, hi] as Unicode blocks (blank: an empty bin)."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:
        return BLOCKS[-1]
    counts = [0] * bins
    for v in values:
        i = int((v - lo) / (hi - lo) * bins)
        counts[min(max(i, 0), bins - 1)] += 1
    top = max(counts)
    return "".join(" " if c == 0 else BLOCKS[min(len(BLOCKS) - 1, (c * len(BLOCKS) - 1) // top)] for c in counts)


def distribution_cell(r: StageResult) -> str:
    """Sparkline of the current samples on a range that also spans the baseline's samples."""
    if r.kind != STAGE or not r.samples_ms:
        return ""
    pool = list(r.samples_ms) + (list(r.baseline.samples_ms) if r.baseline is not None else [])
    lo, hi = min(pool), max(pool)
    unit = "" if r.unit == "call" else f"/{r.unit}"
    return f"{sparkline(r.samples_ms, lo, hi)} {fmt_ms(lo)}..{fmt_ms(hi)}{unit}"


def outcome_counts(results: Iterable[StageResult]) -> dict[str, int]:
    """How many gated rows (stages and cycles, not cold calls) ended in each outcome."""
    counts: dict[str, int] = {}
    for r in results:
        if r.kind != COLD:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return {o: counts[o] for o in sorted(counts, key=lambda o: _ORDER.get(o, 99))}


def trend_sparkline(values: Sequence[float]) -> str:
    """One block per value, its height between the series' min and max (a trend, not a histogram)."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi <= lo:
        return BLOCKS[3] * len(values)
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int((v - lo) / (hi - lo) * len(BLOCKS)))] for v in values)
