"""A real session's HTML report, opened in headless Chromium.

Two real sessions (native and docker) of a small project: the first saves a baseline, the
second writes the JSON report; ``hostperf report`` renders it. Chromium then loads the
file with the network blocked while every request is recorded: the page must ask for
nothing but itself, log no error, and draw exactly one chart per test. The screenshot is
kept under the test's tmp dir (CI keeps it as an artifact).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from headless_chromium import find_chromium, open_page
from sample_projects import CPU_AND_FILES
from sessions import FAST

from pytest_hostperf.cli import main

pytestmark = [pytest.mark.docker, pytest.mark.slow]


# Per test section: how many plotly charts it holds, the chart's row labels and panel titles.
SECTIONS = """
[...document.querySelectorAll("section.test")].map((section) => {
  const charts = section.querySelectorAll(".js-plotly-plot");
  const chart = charts[0];
  return {
    test: section.querySelector(".chart").dataset.test,
    charts: charts.length,
    svg: chart ? chart.querySelectorAll("svg.main-svg").length : 0,
    rows: chart ? chart.layout.yaxis.ticktext : [],
    titles: chart ? chart.layout.annotations.map((a) => a.text.replace(/<[^>]+>/g, "")) : [],
  };
})
"""


@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no chromium binary in CI: scripts/setup.sh installs Debian's chromium")
        pytest.skip("no chromium binary (apt-get install chromium)")
    return binary


def test_real_session_report_draws_one_chart_per_test_offline(pytester: pytest.Pytester, engine: Any,
                                                              chromium: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("plotly", reason="the HTML report needs plotly: pip install 'pytest-hostperf[html]'")
    pytester.makepyfile(test_work=CPU_AND_FILES)
    baselines = pytester.path / "baselines"
    session = [*FAST, "--hostperf", "--hostperf-envs=native,docker", "--hostperf-require=docker",
               f"--hostperf-baselines={baselines}"]
    saved = pytester.runpytest_subprocess(*session, "--hostperf-save", timeout=600)
    assert saved.ret == 0, saved.stdout.str()
    results = pytester.path / "perf.json"
    gated = pytester.runpytest_subprocess(*session, f"--hostperf-json={results}", timeout=600)
    assert gated.ret in (0, 1), gated.stdout.str()   # a slow moment may flag a regression: shown either way
    records = json.loads(results.read_text())["results"]
    assert {r["target"] for r in records} >= {"native", "docker", "docker-bind", "docker-volume"}

    page = tmp_path / "perf.html"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # not the user's ~/.cache
    assert main(["report", str(results), "-o", str(page)]) == 0
    run = open_page(page, ready="document.body.dataset.chartsReady !== undefined", value=SECTIONS)
    (tmp_path / "report.png").write_bytes(run.screenshot or b"")
    print(f"screenshot: {tmp_path / 'report.png'}")

    assert run.errors == []
    assert run.requests == [page.resolve().as_uri()]   # plotly.js and the data are inside the file
    sections = {s["test"]: s for s in run.value}
    assert set(sections) == {"test_work.py::test_cpu", "test_work.py::test_files"}
    for section in sections.values():
        assert section["charts"] == 1 and section["svg"] >= 1, section
        # One saved session: the history panel is there beside distribution and overhead.
        assert [t.split(" ")[0] for t in section["titles"]] == ["time", "ratio", "saved"], section
    assert sections["test_work.py::test_cpu"]["rows"] == ["native", "docker"]
    assert sections["test_work.py::test_files"]["rows"] == ["native", "docker-bind", "docker-volume",
                                                            "docker-tmpfs", "docker-layer"]
    assert (tmp_path / "report.png").stat().st_size > 20_000
