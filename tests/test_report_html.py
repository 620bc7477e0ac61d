"""The HTML report's pure parts: figures (checked against plotly's own schema), the page,
the baselines it reads, the ``hostperf report`` command and its errors.

The real thing, a real session's report opened in headless Chromium, is in
``test_report_html_browser.py``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from report_records import record, report

from pytest_hostperf.baselines import BaselineStore
from pytest_hostperf.cli import main
from pytest_hostperf.model import Record
from pytest_hostperf.report import html as report_html
from pytest_hostperf.report.charts import box_stats, figure_for_test, jitter, log_axis
from pytest_hostperf.report.html import HtmlReportError, read_baselines, render_html
from pytest_hostperf.stats import SessionSummary

try:
    from plotly.graph_objects import Figure as plotly_figure
except ImportError:
    if os.environ.get("CI") == "true":
        raise   # scripts/setup.sh installs the [html] extra: a skip would hide its absence
    pytest.skip("the HTML report needs plotly: pip install 'pytest-hostperf[html]'", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The packed plotly.js goes to a cache of this module's, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        report_html.packed_plotly.cache_clear()
        yield
    report_html.packed_plotly.cache_clear()


def panel_titles(figure: dict[str, Any]) -> list[str]:
    return [re.sub(r"<.*?>", "", a["text"]).split(" ")[0] for a in figure["layout"]["annotations"]]


def validated(figure: dict[str, Any]) -> dict[str, Any]:
    """plotly.py's schema validation: an unknown property or a bad value raises ValueError."""
    plotly_figure(figure)
    return figure


def session(median: float, sid: str, saved_at: str = "2026-01-01T00:00:00+00:00") -> Any:
    from pytest_hostperf.baselines import SavedSession

    return SavedSession(sid, saved_at, median, 0.01, 50, 1, (median,))


# -- figures --------------------------------------------------------------------------------------

def test_box_stats_match_the_reference_quartiles_and_tukey_whiskers() -> None:
    samples = [1, 2, 3, 4, 5, 6, 7, 8, 9, 100]
    stats = box_stats(samples)
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    assert (stats["q1"], stats["median"], stats["q3"]) == (q1, median, q3) == (3.25, 5.5, 7.75)
    assert stats["lowerfence"] == 1 and stats["upperfence"] == 9   # 100 is beyond q3 + 1.5 IQR = 14.5
    assert box_stats([0.5])["median"] == 0.5


def test_jitter_is_bounded_spread_and_the_same_every_time() -> None:
    offsets = jitter(150)
    assert offsets == jitter(150) and all(-0.25 <= o < 0.25 for o in offsets)
    assert len({round(o, 3) for o in offsets}) > 100


def test_log_axis_ticks_cover_the_range_with_readable_labels() -> None:
    axis = log_axis([0.00023, 0.015], lambda v: f"{v * 1e3:g} ms")
    assert axis["type"] == "log"
    assert axis["tickvals"] == [0.0005, 0.001, 0.002, 0.005, 0.01]
    assert axis["ticktext"][1] == "1 ms"
    assert axis["range"][0] < -3.6 and axis["range"][1] > -1.83
    wide = log_axis([1e-6, 10.0], str)
    assert wide["tickvals"] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10]


def test_plain_session_draws_distribution_and_overhead_only() -> None:
    records = [record(target=t) for t in ("native", "docker-bind", "docker-volume")]
    figure = validated(figure_for_test(records))
    assert panel_titles(figure) == ["time", "ratio"]
    # One box trace and one strip trace per environment, a box per target row.
    boxes = {t["name"]: t for t in figure["data"] if t["type"] == "box"}
    assert list(boxes) == ["native", "docker"] and boxes["docker"]["y"] == [1, 2]
    assert boxes["docker"]["median"][1] == pytest.approx(statistics.median(records[2]["samples"]), rel=1e-3)
    assert figure["layout"]["yaxis"]["ticktext"] == ["native", "docker-bind", "docker-volume"]
    strips = [t for t in figure["data"] if t["type"] == "scatter" and t["yaxis"] == "y"]
    assert [len(t["x"]) for t in strips] == [60, 120]
    assert all(1.75 <= row <= 2.25 for row in strips[1]["y"][60:])   # docker-volume's points on its row


def test_budget_history_against_and_instructions_are_drawn_when_present() -> None:
    records = [
        record(target="native", instructions={"per_call": 2.5e8, "ratio_to_baseline": 1.0, "noise": 0.001},
               against={"rev": "abcdef0123456789", "ratio": 1.0, "ci": [0.99, 1.01], "p_value": 0.5,
                        "pairs": [1.0, 0.99, 1.02]}),
        record(target="docker", verdict="overhead", max_overhead=1.1, attribution="platform",
               instructions={"per_call": 2.6e8, "ratio_to_baseline": 1.04, "noise": 0.001},
               against={"rev": "abcdef0123456789", "ratio": 1.1, "ci": [1.08, 1.12], "p_value": 1e-5, "pairs": 120}),
    ]
    histories = {"native": [session(0.002, "a"), session(0.0021, "b")], "docker": [session(0.0024, "a")]}
    figure = validated(figure_for_test(records, histories, tolerance=0.05, session_id="s1"))
    assert panel_titles(figure) == ["time", "ratio", "saved", "A/B:", "instructions"]
    assert "abcdef0123" in figure["layout"]["annotations"][3]["text"]
    budget = next(t for t in figure["data"] if t.get("hovertemplate", "").startswith("budget"))
    assert budget["x"] == [1.1] and budget["y"] == [1]
    overhead = next(t for t in figure["data"] if "native [" in str(t.get("text")))
    assert overhead["marker"]["color"] == ["#d62728"]          # the overhead verdict, in red
    bands = [s for s in figure["layout"]["shapes"] if s["type"] == "rect"]
    spans = [(b["y0"], b["y1"]) if b["xref"].endswith("domain") else (b["x0"], b["x1"]) for b in bands]
    assert len(bands) == 2 and {(round(lo, 4), round(hi, 4)) for lo, hi in spans} == {(0.9524, 1.05)}
    stars = [t for t in figure["data"] if t.get("marker", {}).get("symbol") == "star"]
    assert [s["y"] for s in stars] == [[1.01, 1.01]]           # this session: its ratio to the baseline
    assert stars[0]["marker"]["line"]["color"][1] == "#d62728"  # outlined by its verdict
    pair_points = [t for t in figure["data"] if "pair" in t.get("hovertemplate", "")]
    assert len(pair_points) == 1 and len(pair_points[0]["x"]) == 3


def test_history_excludes_this_session_when_it_was_saved() -> None:
    # --hostperf-save puts this session in the file; the gate judged it against the ones before.
    histories = {"native": [session(0.001, "a"), session(0.003, "b"), session(0.5, "s1")]}
    figure = validated(figure_for_test([record()], histories, session_id="s1"))
    line = next(t for t in figure["data"] if t.get("mode") == "lines+markers")
    assert line["y"] == [pytest.approx(1 / 3 ** 0.5, rel=1e-3), pytest.approx(3 ** 0.5, rel=1e-3)]
    assert figure["layout"]["xaxis3" if "xaxis3" in figure["layout"] else "xaxis2"]["ticktext"][-1] == "now"


def test_a_record_without_samples_or_ratios_draws_nothing_rather_than_failing() -> None:
    figure = validated(figure_for_test([record(samples=0, ratio_to_baseline=None, verdict=None, outcome="skipped")]))
    assert figure["data"] == [] and panel_titles(figure) == []


# -- the page ------------------------------------------------------------------------------------

def test_page_has_one_chart_per_test_and_escapes_what_it_shows() -> None:
    hostile = 't::test_x[<script>alert("x")</script>]'
    skipped = record(test="t::test_z", verdict=None, outcome="skipped", samples=0, ratio_to_baseline=None)
    records = [record(test=hostile), record(test=hostile, target="docker"), record(test="t::test_y"), skipped]
    page = render_html(report(records))
    assert len(re.findall(r'<div class="chart" id="chart-\d+"', page)) == 2
    assert page.count('<section class="test"') == 3 and "Nothing was measured: see why below." in page
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    packed = re.search(r'id="hostperf-figures-gzip-base64">(.*?)</script>', page)
    assert packed is not None
    figures = json.loads(report_html.unpack(packed.group(1)))
    assert [f["id"] for f in figures] == ["chart-0", "chart-1"]
    assert figures[0]["figure"]["layout"]["yaxis"]["ticktext"] == ["native", "docker"]


def test_page_refers_to_nothing_outside_itself() -> None:
    page = render_html(report([record(), record(target="docker")]))
    attributes = re.findall(r'\b(?:src|href|action|data)\s*=\s*["\']?([^"\'\s>]+)', page, re.I)
    assert all(value.startswith("#") for value in attributes), attributes
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page, re.I)
    assert "@import" not in page and "url(" not in page


def test_summary_lists_failures_with_links_and_what_was_not_gated() -> None:
    records = [record(verdict="regression", ratio_to_baseline={"ratio": 1.3, "ci_low": 1.2, "ci_high": 1.4}),
               record(target="docker", verdict="no-baseline", baseline=None)]
    page = render_html(report(records))
    assert ('<li><a href="#t0">tests/test_a.py::test_x[native]</a>: regression: 1.300x baseline '
            '[1.200, 1.400], p=0.3</li>') in page
    assert "docker: 1 item(s) not gated, no baseline for fingerprint dddddddddddd" in page
    assert '<span class="badge v-regression">1 regression</span>' in page


def test_not_a_report_is_refused_with_the_fix() -> None:
    with pytest.raises(HtmlReportError, match="--hostperf-json=PATH"):
        render_html({"tool": "pytest-hostperf"})


def test_missing_plotly_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    report_html.packed_plotly.cache_clear()
    monkeypatch.setitem(sys.modules, "plotly.offline", None)   # import fails as if not installed
    try:
        with pytest.raises(HtmlReportError, match=r"pip install 'pytest-hostperf\[html\]'"):
            render_html(report([record()]))
    finally:
        report_html.packed_plotly.cache_clear()


def test_packed_plotly_is_cached_by_content_and_survives_an_unwritable_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plotly.offline import get_plotlyjs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    report_html.packed_plotly.cache_clear()
    try:
        packed = report_html.packed_plotly()
        assert report_html.unpack(packed) == get_plotlyjs()
        [cached] = (tmp_path / "cache" / "pytest-hostperf" / "html").iterdir()
        assert cached.read_text() == packed
        cached.write_text("from the cache")   # the next process reads it instead of compressing again
        report_html.packed_plotly.cache_clear()
        assert report_html.packed_plotly() == "from the cache"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
        (tmp_path / "file").write_text("not a directory")
        report_html.packed_plotly.cache_clear()
        assert report_html.packed_plotly() == packed
    finally:
        report_html.packed_plotly.cache_clear()


# -- baselines ------------------------------------------------------------------------------------

def save(directory: Path, env: str, fingerprint: str, test: str, mount: str, medians: list[float]) -> Path:
    store = BaselineStore(directory)
    for i, median in enumerate(medians):
        measured = Record(test, env, None if mount == "-" else mount, summary=SessionSummary(median, 0.01, 30),
                          samples=(median,) * 5)
        path = store.save(env, fingerprint, {}, {}, [measured], session_id=f"old{i}")
    return path


def test_histories_come_from_the_records_fingerprints(tmp_path: Path) -> None:
    save(tmp_path, "native", "n" * 12, "tests/test_a.py::test_x", "-", [0.001, 0.002])
    save(tmp_path, "docker", "d" * 12, "tests/test_a.py::test_x", "bind", [0.003])
    save(tmp_path, "docker", "0" * 12, "tests/test_a.py::test_x", "bind", [0.003])   # another machine's
    data = report([record(), record(target="docker-bind"), record(target="docker-volume")])
    view = read_baselines(data, tmp_path)
    assert [s.median_s for s in view.histories[("tests/test_a.py::test_x", "native")]] == [0.001, 0.002]
    assert [s.median_s for s in view.histories[("tests/test_a.py::test_x", "docker-bind")]] == [0.003]
    assert view.histories[("tests/test_a.py::test_x", "docker-volume")] == []
    assert view.other_fingerprints == {"native": [], "docker": ["000000000000"]}
    assert view.problems == []


def test_an_unreadable_baseline_or_directory_is_listed_not_raised(tmp_path: Path) -> None:
    (tmp_path / f"native-{'n' * 12}.json").write_text("{not json")
    data = report([record()])
    view = read_baselines(data, tmp_path)
    assert view.histories == {} and len(view.problems) == 1
    assert "is not valid JSON" in view.problems[0] and str(tmp_path) in view.problems[0]
    assert "--baselines DIR" in read_baselines(data, tmp_path / "missing").problems[0]
    assert "is not valid JSON" in render_html(data, view)


# -- the command ----------------------------------------------------------------------------------

def test_command_writes_the_file_and_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "perf.json"
    source.write_text(json.dumps(report([record(), record(test="t::other")])))
    assert main(["report", str(source)]) == 0
    assert (tmp_path / "perf.html").read_text().count('class="chart"') == 2
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'perf.html'} (2 tests, ")


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist (make it with pytest --hostperf --hostperf-json=PATH)"),
    ('{"results": [', "is not valid JSON (line 1, column 14"),
    ('{"a": 1}', "is not a pytest-hostperf JSON report"),
])
def test_command_errors_name_the_file_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  content: str | None, message: str) -> None:
    source = tmp_path / "perf.json"
    if content is not None:
        source.write_text(content)
    assert main(["report", str(source), "-o", str(tmp_path / "out.html")]) == 2
    error = capsys.readouterr().err
    assert str(source) in error and message in error
    assert not (tmp_path / "out.html").exists()


def test_command_refuses_a_baselines_path_that_is_not_a_directory(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "perf.json"
    source.write_text(json.dumps(report([record()])))
    assert main(["report", str(source), "--baselines", str(tmp_path / "nope")]) == 2
    error = capsys.readouterr().err
    assert f"--baselines {tmp_path / 'nope'}: not a directory" in error


# -- --hostperf-html in a real session ------------------------------------------------------------

def test_hostperf_html_writes_the_report_of_the_session(pytester: pytest.Pytester, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("plotly", reason="the HTML report needs plotly: pip install 'pytest-hostperf[html]'")
    from sessions import run

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # the packed plotly.js: not ~/.cache
    pytester.makepyfile(test_two="def test_a(benchmark):\n    benchmark(sum, [1, 2])\n\n"
                                 "def test_b(benchmark):\n    benchmark(sorted, [3, 1, 2])\n")
    page = pytester.path / "out" / "perf.html"
    result = run(pytester, "--hostperf", f"--hostperf-html={page}")
    assert result.ret == 0, result.stdout.str()
    html = page.read_text()
    assert html.count('<section class="test"') == 2
    assert "test_two.py::test_a" in html and "test_two.py::test_b" in html
    assert 'id="plotly-gzip-base64"' in html
