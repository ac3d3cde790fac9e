"""The HTML report reads on its own: every chart has axis titles and a legend, and the per-token
timeline is drawn over the baseline's median and quartile band.

Two levels: the page parsed with ``html.parser`` (always runs), and the same page rendered by a
real headless Chromium, which measures where the titles, legends and band landed (skipped, with
the reason, where no Chromium is installed: ``apt-get install chromium``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import htmlpage
from pytest_llmcycle.run.results import StageResult
from pytest_llmcycle.storage.baseline import Entry
from pytest_llmcycle.storage.history import Point

KEY = "cpu-test"
META = {"device_key": KEY, "threads": 2, "commit": "abc123", "dirty": True}
#: the decode baseline, per token: q1, median, q3
Q1, MED, Q3 = 1.0, 1.1, 1.2
#: this run's per-position medians: above the band, at q3, at the median, at q1, below the band
TIMELINE = (2.0, Q3, MED, Q1, 0.8)


def spread(center: float, n: int = 30) -> tuple[float, ...]:
    return tuple(round(center * (1 + 0.04 * (((i * 7) % n) / n - 0.5)), 6) for i in range(n))


def rows() -> list[StageResult]:
    decode_base = Entry(MED, Q1, Q3, 30, spread(MED), unit="token")
    prefill_base = Entry(10.0, 9.8, 10.2, 30, spread(10.0))
    return [
        StageResult("tests/test_gen.py::test_generate", "prefill", KEY,
                    vd.Verdict(vd.REGRESSED, 0.1, 0.1, ratio=1.3, ci=(1.2, 1.4), p_value=1e-6, reason="+30.0% slower"),
                    median_ms=13.0, q1_ms=12.8, q3_ms=13.2, n=30, samples_ms=spread(13.0), baseline=prefill_base),
        StageResult("tests/test_gen.py::test_generate", "decode", KEY,
                    vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.02, p_value=0.3, reason="within 10.0%"), unit="token",
                    median_ms=1.12, q1_ms=1.05, q3_ms=1.3, n=150, samples_ms=spread(1.12), baseline=decode_base,
                    timeline_ms=TIMELINE),
        StageResult("tests/test_new.py::test_decode", "decode", KEY,
                    vd.Verdict(vd.NEW, 0.1, 0.1, reason="no baseline yet"), unit="token", median_ms=1.0, n=30,
                    samples_ms=spread(1.0), timeline_ms=(1.2, 1.0, 0.9)),
    ]


def trends() -> dict:
    pts = [Point(i, f"2026-01-0{i}T00:00", "abc", m, m * 0.98, m * 1.02, 30, "ok", "call", KEY)
           for i, m in enumerate([10.0, 10.1, 13.0], 1)]
    return {("tests/test_gen.py::test_generate", "prefill"): pts}


class Svgs(HTMLParser):
    """Every <svg> of a page as a list of (tag, attributes, text) of the elements in it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.svgs: list[list[list]] = []
        self.inside = False
        self.open: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.inside = True
            self.svgs.append([])
        elif self.inside:
            self.open = [tag, dict(attrs), ""]
            self.svgs[-1].append(self.open)

    def handle_startendtag(self, tag, attrs):
        if self.inside:
            self.svgs[-1].append([tag, dict(attrs), ""])

    def handle_data(self, data):
        if self.open is not None and self.open[0] == "text":
            self.open[2] += data

    def handle_endtag(self, tag):
        if tag == "svg":
            self.inside = False
        self.open = None


def classes(el) -> set[str]:
    return set(el[1].get("class", "").split())


def texts(svg, cls: str) -> list[str]:
    return [el[2] for el in svg if el[0] == "text" and cls in classes(el)]


def page() -> str:
    return htmlpage.render(rows(), META, trends())


def test_every_chart_has_axis_titles_and_a_legend_of_its_marks():
    svgs = Svgs()
    svgs.feed(page())
    # test_generate: prefill strip + trend, decode strip + timeline; test_decode: strip + timeline
    assert len(svgs.svgs) == 6
    prefill_strip, prefill_trend, decode_strip, decode_timeline, new_strip, new_timeline = svgs.svgs
    assert texts(prefill_strip, "ax") == ["time per call"]
    assert texts(decode_strip, "ax") == texts(new_strip, "ax") == ["time per token"]
    assert texts(prefill_strip, "lg") == ["one sample", "middle half (quartiles)", "median", "fails above this"]
    assert texts(new_strip, "lg") == ["one sample", "middle half (quartiles)", "median"]  # no baseline: no fail line
    # each legend mark is drawn with the class of the mark it names
    marks = [el for el in prefill_strip if el[0] != "text" and "lg" in classes(el)]
    assert [classes(el) - {"lg", "k"} for el in marks] == [{"dot"}, {"iqr"}, set(), {"fail"}]
    fail_line = [el for el in prefill_strip if classes(el) == {"fail"}]
    assert len(fail_line) == 1 and "fails above 11 ms" in page()  # baseline 10 ms + 10 %
    assert texts(decode_timeline, "ax") == ["generated token (position)", "time per token"]
    y_title = [el for el in decode_timeline if el[0] == "text" and el[2] == "time per token"][0]
    assert y_title[1]["transform"] == "rotate(-90)"  # along the y axis
    assert texts(decode_timeline, "lg") == ["this run, median per position", "baseline median",
                                            "baseline middle half (quartiles)"]
    assert texts(new_timeline, "lg") == ["this run, median per position"]
    assert texts(prefill_trend, "ax") == ["run (oldest to newest)", "time per call"]
    assert texts(prefill_trend, "lg") == ["median of the run", "its quartiles"]


def test_the_timeline_draws_the_baselines_median_and_band_on_its_own_axis():
    svgs = Svgs()
    svgs.feed(page())
    timeline, no_baseline = svgs.svgs[3], svgs.svgs[5]
    band = [el[1] for el in timeline if "baseline-band" in classes(el)]
    median = [el[1] for el in timeline if "baseline-median" in classes(el)]
    assert len(band) == 1 and len(median) == 1
    # the run's points, in order, are TIMELINE: 2.0 above the band, then q3, the median, q1, 0.8 below
    ys = [float(el[1]["cy"]) for el in timeline if el[0] == "circle"]
    assert len(ys) == len(TIMELINE)
    top, height = float(band[0]["y"]), float(band[0]["height"])
    assert ys[1] == pytest.approx(top, abs=0.11)  # the band's top edge is the baseline's q3 ...
    assert ys[3] == pytest.approx(top + height, abs=0.11)  # ... its bottom edge q1 ...
    assert float(median[0]["y1"]) == float(median[0]["y2"]) == ys[2]  # ... and the dashed line its median
    assert ys[0] < top and ys[4] > top + height  # SVG y grows downwards
    assert float(band[0]["width"]) == htmlpage.W - htmlpage.PAD_L - htmlpage.PAD_R  # across every position
    assert "baseline median: 1.1 ms/token" in page() and "baseline quartiles: 1 ms/token .. 1.2 ms/token" in page()
    assert not [el for el in no_baseline if classes(el) & {"baseline-band", "baseline-median"}]


def test_a_baseline_in_another_unit_is_not_drawn_on_the_timeline():
    r = rows()[1]
    other = StageResult(**{**r.__dict__, "baseline": Entry(5.0, 4.0, 6.0, 3, (4.0, 5.0, 6.0), unit="call"),
                           "verdict": vd.Verdict(vd.NOT_COMPARABLE, 0.1, 0.1, reason="unit changed")})
    svgs = Svgs()
    svgs.feed(htmlpage.render([other], META))
    timeline = svgs.svgs[1]
    assert not [el for el in timeline if classes(el) & {"baseline-band", "baseline-median"}]
    assert texts(timeline, "lg") == ["this run, median per position"]


def test_the_page_stays_self_contained():
    text = page()
    assert not re.search(r"https?://|@import|url\(|<link|src=|href=", text), "the report must not load anything"
    assert text.count("<script>") == 1 and text.count("<style>") == 1


# ----------------------------------------------------------------------------- a real browser

#: appended to a copy of the page (the report itself has one script, its own): measures, in the
#: browser's layout, every chart's box and the boxes of its titles, legend, tick labels and band
MEASURE = """<script>
(function () {
  function box(e) { var b = e.getBoundingClientRect();
    return {cls: e.getAttribute('class') || '', text: e.textContent, x: b.left, y: b.top, w: b.width, h: b.height}; }
  function all(svg, sel) { return Array.prototype.map.call(svg.querySelectorAll(sel), box); }
  var out = Array.prototype.map.call(document.querySelectorAll('svg'), function (svg) {
    return {svg: box(svg), ax: all(svg, 'text.ax'), lg: all(svg, 'text.lg'), marks: all(svg, '.lg:not(text)'),
            ticks: all(svg, 'text:not(.ax):not(.lg)'), band: all(svg, '.baseline-band'), median: all(svg, '.baseline-median')};
  });
  var pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run_browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium): the page is only parsed, not rendered")
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def overlaps(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] - 0.5 and b["x"] < a["x"] + a["w"] - 0.5 and a["y"] < b["y"] + b["h"] - 0.5 and b["y"] < a["y"] + a["h"] - 0.5


def inside(a: dict, outer: dict) -> bool:
    return (a["x"] >= outer["x"] - 1 and a["y"] >= outer["y"] - 1 and a["x"] + a["w"] <= outer["x"] + outer["w"] + 1
            and a["y"] + a["h"] <= outer["y"] + outer["h"] + 1)


def test_chromium_lays_out_titles_legends_and_the_baseline_band_where_they_belong(tmp_path):
    html = tmp_path / "report.html"
    html.write_text(page().replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    proc = run_browser(tmp_path, "--dump-dom", html.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', proc.stdout, re.S)
    assert proc.returncode == 0 and found, proc.stderr[-2000:]
    charts = json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert len(charts) == 6
    for i, c in enumerate(charts):
        assert c["svg"]["w"] == htmlpage.W, i  # drawn at its own size, not squeezed
        labels = c["ax"] + c["lg"]
        assert c["ax"] and c["lg"], i
        for t in labels:
            assert t["w"] > 0 and t["h"] > 0, (i, t)  # rendered, in a font the browser has
        for t in labels + c["marks"]:  # (a dot's mark is a zero-length path drawn by its round cap)
            assert inside(t, c["svg"]), (i, t)  # not cut off at the chart's edge
        for j, a in enumerate(labels):
            for b in labels[j + 1:] + c["ticks"]:
                assert not overlaps(a, b), (i, a["text"], b["text"])  # no title or key drawn over another text
        legend = c["lg"]
        assert [t["x"] for t in legend] == sorted(t["x"] for t in legend), i  # one row, left to right
        assert len({round(t["y"]) for t in legend}) == 1, i
        axis_title = [t for t in c["ax"] if t["w"] > t["h"]][0]
        assert max(t["y"] + t["h"] for t in c["ticks"] if t["y"] < axis_title["y"]) <= axis_title["y"] + 1, i  # under the ticks
    timeline = charts[3]
    assert [t["text"] for t in timeline["ax"] if t["h"] > t["w"]] == ["time per token"]  # the y title stands upright
    band, median = timeline["band"][0], timeline["median"][0]
    assert band["h"] > 5 and band["w"] == pytest.approx(htmlpage.W - htmlpage.PAD_L - htmlpage.PAD_R, abs=1)
    assert band["y"] < median["y"] < band["y"] + band["h"]  # the median inside its band


def png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the pixel data) of a PNG, with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    idat, i = b"", 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4:i + 8] == b"IDAT":
            idat += data[i + 8:i + 8 + n]
        i += 12 + n
    return width, height, len(set(zlib.decompress(idat)))


def test_chromium_renders_the_report_to_a_picture(tmp_path):
    html = tmp_path / "report.html"
    html.write_text(page(), encoding="utf-8")
    shot = tmp_path / "report.png"
    proc = run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1000,1800", html.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, colours = png_size_and_colours(shot)
    assert (width, height) == (1000, 1800)
    assert colours > 50  # charts in several colours, not a blank or error page
