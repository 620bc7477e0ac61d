"""Why plotly: the same report drawn with matplotlib (inline SVG) and with plotly.

Both draw, per test, the three panels every report has (the sample distribution per
target as box + strip on a log time axis, the ratio to native with its interval, the
saved-session history) from the same synthetic report (``html_report.synthetic_report``).
matplotlib: one SVG figure per test, made as fast as it goes (text as text, no
``tight_layout``, no mathtext tick labels). plotly: this package's renderer
(``report_html.render_html``, five panels). Printed: render time in this process after
the imports, the imports, and the file size; with ``--browser``, the time until the
page's first chart shows in headless Chromium.

    python3 benchmarks/html_library_choice.py --tests 5 100 --browser
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from html_report import synthetic_report

from pytest_hostperf.report.html import read_baselines, records_by_test, render_html
from pytest_hostperf.sampling import thin


def matplotlib_page(report: dict[str, Any], baselines: Path) -> str:
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams["svg.fonttype"] = "none"   # text as text: smaller and faster than glyph paths
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    view = read_baselines(report, baselines)
    label = FuncFormatter(lambda v, _: f"{v:.3g}")
    parts = []
    for test, records in records_by_test(report["results"]).items():
        figure = Figure(figsize=(13, 0.35 * len(records) + 1.6))
        spread, overhead, history = figure.subplots(1, 3)
        rows = range(len(records))
        spread.boxplot([r["samples"] for r in records], positions=list(rows), orientation="horizontal",
                       showfliers=False, widths=0.6)
        for row, r in zip(rows, records):
            shown = thin(r["samples"], 150)
            spread.scatter(shown, [row + ((k * 0.618) % 1 - 0.5) * 0.5 for k in range(len(shown))], s=3, alpha=0.4)
        for row, r in zip(rows, records):
            ratio = r["ratio_to_native"]
            if ratio:
                overhead.errorbar([ratio["ratio"]], [row], xerr=[[ratio["ratio"] - ratio["ci_low"]],
                                                                  [ratio["ci_high"] - ratio["ratio"]]], fmt="o")
            saved = view.histories.get((test, r["target"]), [])
            if saved:
                centre = math.exp(statistics.fmean(math.log(s.median_s) for s in saved))
                history.plot(range(len(saved)), [s.median_s / centre for s in saved], marker="o", ms=3)
        history.axhspan(1 / 1.05, 1.05, alpha=0.15)
        for axis in (spread, overhead):
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(label)
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_yticks(list(rows), [r["target"] for r in records])
            axis.invert_yaxis()
        figure.subplots_adjust(left=0.08, right=0.99, wspace=0.35)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        parts.append(f"<section><h2>{test}</h2>{buffer.getvalue()}</section>")
    return "<!DOCTYPE html><html><body>" + "".join(parts) + "</body></html>"


def render_plotly(report: dict[str, Any], baselines: Path) -> str:
    return render_html(report, read_baselines(report, baselines))


def timed(make: Any) -> tuple[str, float]:
    start = time.perf_counter()
    page = make()
    return page, time.perf_counter() - start


def first_chart_s(page: Path, ready: str) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from headless_chromium import open_page

    run = open_page(page, ready, "performance.now()", timeout=900, screenshot=False, full_height=False)
    return run.value / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, nargs="+", default=[5, 100])
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    start = time.perf_counter()
    import matplotlib.pyplot  # noqa: F401  (what a matplotlib renderer pays on import)
    mpl_import = time.perf_counter() - start
    start = time.perf_counter()
    from pytest_hostperf.report.html import packed_plotly

    packed_plotly()
    plotly_import = time.perf_counter() - start
    print(f"imports: matplotlib {mpl_import:.2f} s; plotly.offline + reading and packing plotly.js "
          f"{plotly_import:.2f} s")
    with tempfile.TemporaryDirectory(prefix="hostperf-html-choice-") as tmp:
        for tests in args.tests:
            baselines = Path(tmp) / f"b{tests}"
            report = synthetic_report(tests, baselines)
            mpl, mpl_s = timed(functools.partial(matplotlib_page, report, baselines))
            ply, ply_s = timed(functools.partial(render_plotly, report, baselines))
            line = (f"{tests} tests: matplotlib SVG {mpl_s:.2f} s, {len(mpl.encode()) / 1e6:.2f} MB; "
                    f"plotly {ply_s:.2f} s, {len(ply.encode()) / 1e6:.2f} MB (plotly.js uncompressed would add 2.8 MB)")
            if args.browser:
                (Path(tmp) / "m.html").write_text(mpl)
                (Path(tmp) / "p.html").write_text(ply)
                m_first = first_chart_s(Path(tmp) / "m.html", "document.querySelector('svg') !== null")
                # plotly charts are drawn when they come near the screen: scroll to the first one.
                p_first = first_chart_s(Path(tmp) / "p.html", "(document.getElementById('chart-0').scrollIntoView(), "
                                        "Number(document.body.dataset.chartsDrawn || 0) >= 1)")
                line += f"; first chart in Chromium: matplotlib {m_first:.1f} s, plotly {p_first:.1f} s"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
