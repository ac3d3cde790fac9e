"""The HTML report: one self-contained file (inline CSS, SVG and a few lines of JS, no network).

Per test: its rows as a table; per stage, a strip plot of the current samples against the
baseline's (boxes at the quartiles, the line where the stage would fail); for per-token
stages, the latency of each generated token in order when the stage recorded it, over the
baseline's median and quartile band; with a history store, the stage's median over past runs.
Every chart has axis titles (class ``ax``) and a legend row (class ``lg``) drawn in its own SVG,
so a chart read on its own, far down a long page, still says what its marks are. Rendering only.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence


from ..engine import verdict as vd
from .escape import html_text
from .terminal import change_cell, fmt_ms, sort_rows, verdict_cell
from .markdown import summary_line
from ..run.results import COLD, STAGE, StageResult

W, LANE, PAD_L, PAD_R = 680, 26, 80, 50
BASELINE = "#8a8a8a"  # the baseline's colour in every chart
COLORS = {
    vd.REGRESSED: "#c62828",
    vd.INCONCLUSIVE: "#ef8f00",
    vd.NOT_COMPARABLE: "#7b7b7b",
    vd.NEW: "#1565c0",
    vd.IMPROVED: "#2e7d32",
    vd.OK: "#2e7d32",
}
CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:15px;font-family:ui-monospace,monospace;margin:0 0 8px}
table{border-collapse:collapse;margin:6px 0 10px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.badge,.nw{white-space:nowrap}
section.test{border:1px solid #ddd;border-radius:6px;padding:12px;margin:14px 0}
.badge{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:12px}
.reason{color:#555;font-size:12px}figure{margin:6px 0 12px}figcaption{font-size:12px;color:#555}
svg text{font:11px system-ui,sans-serif;fill:#444}details{margin:10px 0}
svg text.ax{font-weight:600;fill:#333}.dot{stroke-opacity:.6;stroke-width:4;stroke-linecap:round;fill:none}
.iqr,.band{fill-opacity:.15}.fail{stroke:#c62828;stroke-dasharray:4 3}.base{stroke-dasharray:5 3;stroke-width:1.5}
.k{stroke:#666;fill:#666}
"""
JS = """
document.getElementById('only-failing').addEventListener('change',function(e){
  document.querySelectorAll('section.test').forEach(function(s){
    s.style.display=(e.target.checked&&s.dataset.ok==='1')?'none':'';});});
"""


#: a string that :func:`escape.html_text` returns unchanged: no character HTML gives a meaning
#: (``& < > " '``) and none of its controls (``escape._CONTROLS``)
_PLAIN = re.compile("[^&<>\"'\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]*")


def esc(x: Any) -> str:
    """Every text and attribute value that is not a number this module formats goes through here.

    Most are plain (times, labels, reasons): those are returned as they are, without the two
    passes of ``html_text`` (a third of the page's time at 2,000 stages); the result is the same.
    """
    if type(x) is str and _PLAIN.fullmatch(x):
        return x
    return html_text(x)


def badge(outcome: str, text: str | None = None) -> str:
    return f'<span class="badge" style="background:{COLORS.get(outcome, "#555")}">{esc(text or outcome)}</span>'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(values)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        i = int(k)
        return s[i] + (s[min(i + 1, len(s) - 1)] - s[i]) * (k - i)

    return q(0.25), q(0.5), q(0.75)


@functools.lru_cache(maxsize=64)
def _jitter_y(y0: float, n: int) -> tuple[str, ...]:
    """The rest of each dot's path command after its x: its y (golden-ratio steps, scattered
    yet reproducible) and the zero-length segment that draws it."""
    return tuple(f"{round(y0 + 5 + (j * 0.6180339887) % 1.0 * (LANE - 12))}h0" for j in range(n))


_MOVE = [f"M{px} " for px in range(W + 1)]


def strip_plot(r: StageResult) -> str:
    """Samples of the baseline (grey) and of this run (verdict colour) on one millisecond axis.

    Drawn 2,000 times in a large suite's report, so plain Python on each lane's few dozen
    samples (no per-lane numpy round trips, no helper calls per coordinate); times are numbers
    this module formats (``fmt_ms``), which need no escaping.
    """
    lanes = []
    if r.baseline is not None and r.baseline.samples_ms:
        lanes.append(("baseline", r.baseline.samples_ms, BASELINE))
    # time did not decide a row counters decided: its samples are not drawn in the verdict's colour
    by_counters = r.verdict.decided_by == vd.BY_COUNTERS
    lanes.append(("this run", r.samples_ms, "#555" if by_counters else COLORS.get(r.outcome, "#555")))
    lo = min([min(vals) for _, vals, _ in lanes])
    hi = max([max(vals) for _, vals, _ in lanes])
    fail_at = None
    if r.baseline is not None and r.outcome != vd.NOT_COMPARABLE:
        fail_at = r.baseline.median_ms * (1 + r.verdict.effective_threshold)
        lo, hi = min(lo, fail_at), max(hi, fail_at)
    span = (hi - lo) or max(hi, 1e-9) * 0.1
    lo, hi = lo - span * 0.05, hi + span * 0.05
    d, wi = hi - lo, W - PAD_L - PAD_R  # x(v) = PAD_L + (v - lo) / d * wi
    ya = LANE * len(lanes) + 10  # the time axis; under it its tick labels, its title and the legend
    h = ya + 58

    parts = [f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">']
    for i, (name, vals, color) in enumerate(lanes):
        y0 = 8 + i * LANE
        q1, med, q3 = _quartiles(vals)
        x1, xm, x3 = PAD_L + (q1 - lo) / d * wi, PAD_L + (med - lo) / d * wi, PAD_L + (q3 - lo) / d * wi
        # every dot of a lane in one path of zero-length round-capped segments: a sixth of the
        # bytes of one <circle> per sample (the report stays a few MB at 2,000 stages); 1 px steps
        scale = wi / d
        xs = [round(PAD_L + (v - lo) * scale) for v in vals]
        if min(xs) < 0 or max(xs) > W:
            xs = [min(max(px, 0), W) for px in xs]
        dots = "".join(map(str.__add__, map(_MOVE.__getitem__, xs), _jitter_y(y0, len(vals))))
        parts.append(
            f'<text x="4" y="{y0 + 14}">{name}</text>'
            f'<rect x="{x1:.1f}" y="{y0 + 2}" width="{max(x3 - x1, 1):.1f}" height="{LANE - 6}" '
            f'class="iqr" fill="{color}" stroke="{color}"><title>{name}: IQR {fmt_ms(q1)} .. {fmt_ms(q3)}</title></rect>'
            f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{y0}" y2="{y0 + LANE - 2}" stroke="{color}" stroke-width="2"/>'
            f'<path d="{dots}" class="dot" stroke="{color}">'
            f"<title>{name}: {len(vals)} samples</title></path>"
        )
    if fail_at is not None:
        fx = PAD_L + (fail_at - lo) / d * wi
        parts.append(
            f'<line x1="{fx:.1f}" x2="{fx:.1f}" y1="4" y2="{ya - 2}" class="fail">'
            f"<title>fails above {fmt_ms(fail_at)} (baseline median + {r.verdict.effective_threshold:.0%})</title></line>"
        )
    parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{ya}" y2="{ya}" stroke="#999"/>')
    for t in _ticks(lo, hi):
        parts.append(f'<text x="{PAD_L + (t - lo) / d * wi:.1f}" y="{ya + 14}" text-anchor="middle">{fmt_ms(t)}</text>')
    parts.append(_x_title(ya + 32, f"time per {r.unit}"))
    parts.append(_strip_legend(ya + 50, fail_at is not None))
    parts.append("</svg>")
    return "".join(parts)


# Legend marks, each 14 px wide and centred on (x + 7, y); colour from ``c`` or the neutral class k.
_MARKS = {
    "dot": '<path class="lg dot k" d="M{m} {y}h0"/>',
    "box": '<rect class="lg iqr k" x="{x}" y="{t}" width="14" height="10"/>',
    "bar": '<line class="lg k" x1="{m}" x2="{m}" y1="{t}" y2="{b}" stroke-width="2"/>',
    "fail": '<line class="lg fail" x1="{m}" x2="{m}" y1="{t}" y2="{b}"/>',
    "line": '<line class="lg" x1="{x}" x2="{e}" y1="{y}" y2="{y}" stroke="{c}" stroke-width="1.5"/>',
    "dash": '<line class="lg base" x1="{x}" x2="{e}" y1="{y}" y2="{y}" stroke="{c}"/>',
    "band": '<rect class="lg band" x="{x}" y="{t}" width="14" height="10" fill="{c}"/>',
}


def _legend(y: int, items: Sequence[tuple[str, str, str]]) -> str:
    """One row of (mark, colour, label) keys from the plot's left edge. Labels are this module's
    own words, but escaped all the same."""
    out, x = [], PAD_L
    for mark, color, label in items:
        out.append(_MARKS[mark].format(x=x, m=x + 7, e=x + 14, y=y, t=y - 5, b=y + 5, c=color))
        out.append(f'<text class="lg" x="{x + 18}" y="{y + 4}">{esc(label)}</text>')
        x += 18 + 6 * len(label) + 16  # ~6 px a character at 11 px
    return "".join(out)


@functools.lru_cache(maxsize=8)
def _strip_legend(y: int, fail: bool) -> str:
    items = [("dot", "", "one sample"), ("box", "", "middle half (quartiles)"), ("bar", "", "median")]
    return _legend(y, items + ([("fail", "", "fails above this")] if fail else []))


def _x_title(y: float, text: str) -> str:
    return f'<text class="ax" x="{(PAD_L + W - PAD_R) / 2:.0f}" y="{y:.0f}" text-anchor="middle">{esc(text)}</text>'


def _y_title(top: float, bottom: float, text: str) -> str:
    # rotate(-90) maps (x, y) to (y, -x): x=-centre, y=14 puts it centred on the axis, 14 px from the edge
    return f'<text class="ax" transform="rotate(-90)" x="{-(top + bottom) / 2:.0f}" y="14" text-anchor="middle">{esc(text)}</text>'


def line_chart(ys: Sequence[float], *, band: Sequence[tuple[float, float]] | None = None, labels: Sequence[str] | None = None,
               color: str = "#1565c0", unit: str = "", x_title: str = "", y_title: str = "",
               legend: Sequence[tuple[str, str]] = (), baseline: tuple[float, float, float] | None = None) -> str:
    """A small line chart of ``ys`` (ms) over their index, with an optional q1..q3 band per point,
    an optional ``baseline`` (q1, median, q3) drawn across the whole chart (grey band and dashed
    median), axis titles and a legend of ``legend`` ((mark, label) pairs, marks as in :data:`_MARKS`)."""
    h, top, yb = 176, 10, 116  # yb: the x axis; under it its labels, its title and the legend
    flat = [baseline[0], baseline[2]] if baseline else []
    lo = min(list(ys) + [b[0] for b in band or []] + flat)
    hi = max(list(ys) + [b[1] for b in band or []] + flat)
    lo, hi = (lo * 0.95, hi * 1.05) if hi > lo else (lo * 0.9, hi * 1.1 + 1e-9)
    n = len(ys)

    def x(i: float) -> float:
        return PAD_L + (i / max(n - 1, 1)) * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (yb - top)

    parts = [f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">']
    if baseline:
        q1, med, q3 = baseline
        parts.append(
            f'<rect class="band baseline-band" x="{PAD_L}" y="{y(q3):.1f}" width="{W - PAD_L - PAD_R}" '
            f'height="{max(y(q1) - y(q3), 1):.1f}" fill="{BASELINE}"><title>baseline quartiles: '
            f"{esc(fmt_ms(q1) + unit)} .. {esc(fmt_ms(q3) + unit)}</title></rect>"
        )
        parts.append(
            f'<line class="base baseline-median" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(med):.1f}" y2="{y(med):.1f}" '
            f'stroke="{BASELINE}"><title>baseline median: {esc(fmt_ms(med) + unit)}</title></line>'
        )
    if band:
        pts = [f"{x(i):.1f},{y(b[1]):.1f}" for i, b in enumerate(band)] + [
            f"{x(i):.1f},{y(b[0]):.1f}" for i, b in reversed(list(enumerate(band)))
        ]
        parts.append(f'<polygon points="{" ".join(pts)}" class="band" fill="{color}"/>')
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    for i, v in enumerate(ys):
        tip = (labels[i] + ": " if labels else f"#{i + 1}: ") + fmt_ms(v) + unit
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"><title>{esc(tip)}</title></circle>')
    for t in _ticks(lo, hi, 3):
        parts.append(f'<text x="{PAD_L - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{esc(fmt_ms(t))}</text>')
    parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{yb}" y2="{yb}" stroke="#999"/>')
    parts.append(f'<text x="{PAD_L}" y="{yb + 16}">{esc(labels[0] if labels else "1")}</text>')
    parts.append(f'<text x="{W - PAD_R}" y="{yb + 16}" text-anchor="end">{esc(labels[-1] if labels else str(n))}</text>')
    if x_title:
        parts.append(_x_title(yb + 34, x_title))
    if y_title:
        parts.append(_y_title(top, yb, y_title))
    if legend:
        parts.append(_legend(yb + 52, [(mark, BASELINE if mark in ("dash", "band") and baseline else color, label)
                                       for mark, label in legend]))
    parts.append("</svg>")
    return "".join(parts)


def timeline(r: StageResult) -> Sequence[float] | None:
    """Per-token latencies in generation order (median per position), when the record has them.

    ``StageResult`` keeps thinned, sorted samples, which have lost the order; a record with a
    ``timeline_ms`` field (one value per generated token) gets the timeline chart.
    """
    t = getattr(r, "timeline_ms", None)
    return list(t) if t and len(t) >= 2 else None


def _timeline_baseline(r: StageResult) -> tuple[float, float, float] | None:
    """The baseline's (q1, median, q3) per token, when it is in the timeline's unit: its
    per-position medians are drawn over the spread of every token time the baseline stored."""
    b = r.baseline
    if b is None or b.unit != r.unit or r.outcome == vd.NOT_COMPARABLE:
        return None
    return (b.q1_ms, b.median_ms, b.q3_ms)


def timeline_chart(r: StageResult, t: Sequence[float]) -> str:
    """The per-token timeline of ``r``: this run's median per token position, over the baseline."""
    base = _timeline_baseline(r)
    legend = [("line", "this run, median per position")]
    if base:
        legend += [("dash", "baseline median"), ("band", "baseline middle half (quartiles)")]
    return line_chart(t, unit=f"/{r.unit}", x_title="generated token (position)", y_title=f"time per {r.unit}",
                      legend=legend, baseline=base)


def _counters(r: StageResult) -> str:
    from ..engine.counts import fmt_count

    per = "" if r.unit == "call" else f"/{r.unit}"
    return ", ".join(f"{k} {fmt_count(k, v)}{per}" for k, v in r.counters.items() if isinstance(v, (int, float)) and k != "counted_by")


def _rows_table(rows: Sequence[StageResult]) -> str:
    out = ["<table><tr><th>stage</th><th>baseline</th><th>current</th><th>change</th><th>n</th><th>verdict</th><th>why</th></tr>"]
    for r in rows:
        unit = "" if r.unit == "call" else f"/{r.unit}"
        base = fmt_ms(r.baseline.median_ms) + unit if r.baseline else "-"
        out.append(
            f"<tr><td>{esc(r.label)}</td><td class=num>{esc(base)}</td><td class=num>{esc(fmt_ms(r.median_ms) + unit)}</td>"
            f"<td class=num>{esc(change_cell(r.verdict) if r.kind != COLD else '-')}</td><td class=num>{esc(r.n)}</td>"
            f"<td>{badge(r.outcome if r.kind != COLD else 'info', verdict_cell(r))}</td>"
            f'<td class="reason">{esc(r.verdict.reason)}'
            + (f"<br>{esc(_counters(r))}" if r.counters and r.kind != COLD else "")
            + "</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _test_section(nodeid: str, rows: Sequence[StageResult], trends: Mapping[tuple[str, str], Sequence[Any]]) -> str:
    ok = all(r.outcome in (vd.OK, vd.IMPROVED, vd.NEW) or r.kind == COLD for r in rows)
    worst = min((r.outcome for r in rows if r.kind != COLD), key=lambda o: vd.OUTCOMES.index(o) if o in vd.OUTCOMES else 99, default=vd.OK)
    out = [f'<section class="test" data-ok="{int(ok)}"><h2>{badge(worst)} {esc(nodeid)}</h2>', _rows_table(rows)]
    for r in rows:
        if r.kind != STAGE or not r.samples_ms:
            continue
        unit = "" if r.unit == "call" else f" per {r.unit}"
        out.append(f"<figure>{strip_plot(r)}<figcaption>{esc(r.stage)}: samples{esc(unit)}, baseline vs this run"
                   f"{' (dashed: where the stage would fail)' if r.baseline is not None else ''}"
                   f"{esc('; time did not decide: ' + r.verdict.reason) if r.verdict.decided_by == vd.BY_COUNTERS else ''}"
                   "</figcaption></figure>")
        t = timeline(r)
        if t:
            out.append(f"<figure>{timeline_chart(r, t)}<figcaption>{esc(r.stage)}: latency of each generated token, in order"
                       f"{' (grey: the baseline)' if _timeline_baseline(r) else ''}</figcaption></figure>")
        points = [p for p in trends.get((r.nodeid, r.stage), []) if getattr(p, "median_ms", None) is not None]
        if len(points) >= 2:
            out.append(
                "<figure>"
                + line_chart(
                    [p.median_ms for p in points],
                    band=[(p.q1_ms or p.median_ms, p.q3_ms or p.median_ms) for p in points],
                    labels=[(p.created or "")[:16] + (f" {p.commit[:8]}" if p.commit else "") for p in points],
                    color="#6a1b9a",
                    unit="" if r.unit == "call" else f"/{r.unit}",
                    x_title="run (oldest to newest)",
                    y_title=f"time per {r.unit}",
                    legend=[("line", "median of the run"), ("band", "its quartiles")],
                )
                + f"<figcaption>{esc(r.stage)}: median (band: quartiles) over the last {len(points)} runs</figcaption></figure>"
            )
    out.append("</section>")
    return "".join(out)


def render(
    results: Sequence[StageResult],
    meta: Mapping[str, Any],
    trends: Mapping[tuple[str, str], Sequence[Any]] | None = None,
    title: str = "pytest-llmcycle report",
) -> str:
    ordered = sort_rows(results)
    groups: dict[str, list[StageResult]] = {}
    for r in ordered:
        groups.setdefault(r.nodeid, []).append(r)
    counts = summary_line(results)
    env = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sorted(meta.items()) if not isinstance(v, (dict, list))
    )
    env += "".join(f"<tr><th>setting {esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sorted((meta.get("settings") or {}).items()))
    body = "".join(_test_section(n, rows, trends or {}) for n, rows in groups.items())
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(counts)}"
        + (f" on <code>{esc(meta['device_key'])}</code>" if meta.get("device_key") else "")
        + "</p><label><input type=checkbox id=only-failing> hide tests where every stage passed cleanly</label>"
        f"<details><summary>Environment</summary><table>{env}</table></details>{body}"
        f"<script>{JS}</script></body></html>\n"
    )
