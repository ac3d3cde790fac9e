"""The Markdown report: one table for a pull-request comment or a GitHub job summary.

Regressions first, a histogram sparkline of each stage's samples (on a range that also spans
its baseline's samples, so a shift shows), a note per row where the verdict alone does not say
enough (why a row was not judged, the counter that decided it, a stage past twice its
baseline), the command that accepts the new numbers, and the environment in a collapsible
``<details>`` block. Rendering only.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..engine import verdict as vd
from .escape import md_code, md_text
from .terminal import (
    accept_command, change_cell, distribution_cell, fmt_ms, not_judged, notes as row_notes, outcome_counts, sort_rows,
    verdict_cell,
)
from ..run.results import COLD, StageResult

ICONS = {
    vd.REGRESSED: "❌",
    vd.INCONCLUSIVE: "⚠️",
    vd.NOT_COMPARABLE: "⚪",
    vd.NEW: "🆕",
    vd.IMPROVED: "🚀",
    vd.OK: "✅",
}
HEADERS = ["", "test", "stage", "baseline", "current", "change", "verdict", "samples", "note"]
#: rows in one table: a PR comment holds 65,536 characters; regressions come first, so a long
#: table loses only its tail of passing rows (all of them are in the JSON and HTML reports)
MAX_ROWS = 150

#: environment rows of the <details> block: (meta key, label)
ENV_ROWS = [
    ("device_key", "device key"),
    ("device", "device"),
    ("device_name", "device name"),
    ("threads", "torch threads"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("python", "Python"),
    ("platform", "platform"),
    ("plugin_version", "pytest-llmcycle"),
    ("commit", "commit"),
    ("baseline_file", "baseline file"),
    ("created", "run finished"),
]


def cell(text: Any) -> str:
    """A table cell (or list item) that shows exactly ``text``: see :func:`escape.md_text`."""
    return md_text(text)


def code(text: str) -> str:
    """An inline code cell that shows exactly ``text``: see :func:`escape.md_code`."""
    return md_code(text)


def summary_line(results: Sequence[StageResult]) -> str:
    counts = outcome_counts(results)
    if not counts:
        return "no stages measured"
    return ", ".join(f"{n} {o}" for o, n in counts.items())


def row(r: StageResult) -> list[str]:
    unit = "" if r.unit == "call" else f"/{r.unit}"
    verdict = cell(verdict_cell(r))
    dist = distribution_cell(r)
    if r.outcome == vd.REGRESSED:
        verdict = f"**{verdict}**"
    return [
        "" if r.kind == COLD else ICONS.get(r.outcome, ""),
        code(r.nodeid),
        cell(r.label),
        cell(fmt_ms(r.baseline.median_ms if r.baseline else None) + (unit if r.baseline else "")),
        cell(fmt_ms(r.median_ms) + unit),
        change_cell(r.verdict) if r.kind != COLD else "-",
        verdict,
        code(dist) if dist else "",
        cell(note(r)),
    ]


def note(r: StageResult) -> str:
    """Why a row reads as it does, where the verdict alone does not say: the reason of a row that
    was not judged, the counter that decided a row, and the warning of a row past 2x its baseline."""
    if r.kind == COLD:
        return ""
    v = r.verdict
    parts = []
    if r.outcome in (vd.INCONCLUSIVE, vd.NOT_COMPARABLE, vd.NEW) or v.decided_by == vd.BY_COUNTERS:
        parts.append(v.reason)
    if r.warning:
        parts.append(f"{ICONS[vd.INCONCLUSIVE]} {r.warning}")
    return "; ".join(p for p in parts if p)


def table(results: Sequence[StageResult], max_rows: int = MAX_ROWS) -> str:
    """The gated rows (stages and cycles); first-call (cold) rows are left to the JSON/HTML reports."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    rows = [r for r in sort_rows(results) if r.kind != COLD]
    for r in rows[:max_rows]:
        lines.append("| " + " | ".join(row(r)) + " |")
    if len(rows) > max_rows:
        left = outcome_counts(rows[max_rows:])
        lines.append(f"\n... and {len(rows) - max_rows} more row(s) ({', '.join(f'{n} {o}' for o, n in left.items())}) in the JSON and HTML reports")
    return "\n".join(lines)


def render(results: Sequence[StageResult], meta: Mapping[str, Any], title: str = "pytest-llmcycle") -> str:
    results = list(results)
    failing = [r for r in results if r.outcome == vd.REGRESSED]
    head = ICONS[vd.REGRESSED] if failing else ICONS[vd.OK]
    where = meta.get("device_key")
    against = meta.get("against") or {}
    if against:  # --llmcycle-against: the base ran beside this checkout on the same machine
        out = [f"### {head} {cell(title)}: this pull request against its base {md_code(against['base'], table=False)}: "
               f"{cell(summary_line(results))}", "",
               f"The base and this checkout ran on the same machine in the same job, {against.get('pairs', 1)} process "
               "pair(s) taking turns round by round; a stage fails when it is slower than in the base by more than the "
               "threshold, significantly, in every process pair.", ""]
        removed = against.get("removed") or {}
        if removed:
            out += ["**Only in the base (removed or renamed):**", ""]
            out += [f"- {code(n)}: {cell(', '.join(secs))}" for n, secs in sorted(removed.items())] + [""]
        for n, why in sorted((against.get("base_failures") or {}).items()):
            out += [f"- the base's {code(n)} failed ({cell(why)}): its stages are judged as far as it ran", ""]
    else:
        out = [f"### {head} {cell(title)}: {cell(summary_line(results))}" + (f" on {md_code(where, table=False)}" if where else ""), ""]
    unjudged = not_judged(results)
    if unjudged:
        _, reasons = row_notes(unjudged)
        out += [f"**{len(unjudged)} stage{'s' if len(unjudged) != 1 else ''} not judged** (they pass without a verdict on their time):", ""]
        out += [f"- {cell(text)}" + (f" ({n} rows)" if n > 1 else "") for text, n in reasons] + [""]
    warned = [r for r in sort_rows(results) if r.warning]
    if warned:
        out += [f"{ICONS[vd.INCONCLUSIVE]} **{len(warned)} stage{'s' if len(warned) != 1 else ''} read more than twice the baseline:**", ""]
        out += [f"- {code(r.nodeid)} {cell(r.label)}: {cell(r.warning)}" for r in warned] + [""]
    if results:
        out += [table(results), ""]
    if failing and not against:
        out += [
            "A stage fails only when it is slower than its baseline by more than the threshold, "
            "significantly, and a re-measure confirms it. To accept the new numbers, record them "
            "and commit the baseline file (the diff shows the change to review):",
            "",
            "```",
            accept_command(r.nodeid for r in failing),  # one line (controls made visible): nothing ends the fence
            "```",
            "",
        ]
    notes = sorted({f"{r.label}: {r.verdict.reason}" for r in results if r.outcome in (vd.INCONCLUSIVE, vd.NOT_COMPARABLE)})
    if notes:
        out += ["<details><summary>Notes</summary>", ""] + [f"- {cell(n)}" for n in notes] + ["", "</details>", ""]
    env = [(label, meta[key]) for key, label in ENV_ROWS if meta.get(key) not in (None, "")]
    settings = meta.get("settings") or {}
    env += [(f"setting {k}", v) for k, v in sorted(settings.items()) if v is not None]
    if env:
        out += ["<details><summary>Environment</summary>", "", "| | |", "|---|---|"]
        out += [f"| {cell(k)} | {cell(v)} |" for k, v in env]
        out += ["", "</details>", ""]
    return "\n".join(out)
