"""The HTML report: one self-contained file with a summary and one chart per test.

Rendered from the JSON report dict (``--hostperf-json``) and, for the history panel, the
baselines directory. The charts are plotly figures (:mod:`pytest_hostperf.report.charts`);
plotly.js comes from the ``plotly`` package (``pip install 'pytest-hostperf[html]'``) and is
embedded once, gzip-compressed and base64-encoded (4.8 MB raw, 2.0 MB so), and so are the
figures; the browser's own ``DecompressionStream`` unpacks them: the file needs no network
to be viewed and stays under 5 MB for 100 tests. Without JavaScript the tables still hold
every number.

Importable without pytest; library code: raises, never prints.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import hashlib
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf.baselines import BaselineError, BaselineFile, BaselineStore, SavedSession, read_baseline
from pytest_hostperf.report.charts import figure_for_test
from pytest_hostperf.report.summary import (
    Record,
    environments,
    failures,
    not_covered,
    one_line_reason,
    ratio_interval,
    status,
    verdict_counts,
)
from pytest_hostperf.report.terminal import format_seconds


class HtmlReportError(Exception):
    """The HTML report cannot be made; the message says what is missing and how to fix it."""


@dataclasses.dataclass
class BaselineView:
    """What the baselines directory adds to a report: each target's saved sessions."""

    directory: Path | None
    histories: dict[tuple[str, str], list[SavedSession]] = dataclasses.field(default_factory=dict)
    other_fingerprints: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)

    def for_test(self, test: str) -> dict[str, list[SavedSession]]:
        return {target: sessions for (name, target), sessions in self.histories.items() if name == test}


def read_baselines(report: Mapping[str, Any], directory: Path | None = None) -> BaselineView:
    """The saved history of every record's (test, target), from ``directory`` or the session's own.

    A directory or file that cannot be read is a problem listed in the report, never an
    exception: the rest of the report is still worth having.
    """
    directory = Path(directory or (report.get("settings") or {}).get("baselines") or "baselines")
    view = BaselineView(directory)
    if not directory.is_dir():
        view.problems.append(f"baseline history not shown: {directory} is not a directory "
                             "(pass the baselines directory with --baselines DIR)")
        return view
    store = BaselineStore(directory)
    files: dict[tuple[str, str], BaselineFile | None] = {}
    for record in report.get("results", []):
        env, fingerprint = str(record.get("env")), record.get("fingerprint_id")
        if not fingerprint:
            continue
        key = (env, str(fingerprint))
        if key not in files:
            files[key] = _load(store.path_for(*key), view)
            view.other_fingerprints[env] = sorted(
                p.stem.rsplit("-", 1)[1] for p in store.files_for(env) if p != store.path_for(*key))
        baseline = files[key]
        if baseline is not None:
            sessions = baseline.history(str(record["test"]), str(record.get("mount") or "-"))
            view.histories[(str(record["test"]), str(record["target"]))] = sessions
    return view


def _load(path: Path, view: BaselineView) -> BaselineFile | None:
    if not path.exists():
        return None
    try:
        return read_baseline(path)
    except BaselineError as exc:
        view.problems.append(f"baseline history not shown: {exc}")
        return None


def pack(text: str) -> str:
    """gzip, then base64: what the page's loader unpacks with the browser's DecompressionStream."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")


def unpack(packed: str) -> str:
    """The inverse of :func:`pack` (for tests and tools that read a report back)."""
    return gzip.decompress(base64.b64decode(packed)).decode("utf-8")


@functools.lru_cache(maxsize=1)
def packed_plotly() -> str:
    """plotly.js from the installed ``plotly`` package, packed (4.8 MB -> 2.0 MB).

    Compressing takes 0.15-1 s on a busy 2-core machine, most of a small report's time,
    so the result is kept in ``$XDG_CACHE_HOME/pytest-hostperf/html/``, named by the
    script's hash (gzip without a timestamp: the same bytes every time). A cache that
    cannot be written costs only the time.
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise HtmlReportError("the HTML report draws its charts with plotly, which is not installed: "
                              "pip install 'pytest-hostperf[html]' (or pip install plotly)") from exc
    script = get_plotlyjs()
    cached = cache_dir() / f"plotly-{hashlib.sha256(script.encode('utf-8')).hexdigest()[:20]}.js.gz.b64"
    try:
        return cached.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        pass
    packed = pack(script)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{cached.name}.", dir=cached.parent)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(packed)
        os.replace(temporary, cached)
    except OSError:
        pass
    return packed


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-hostperf/html`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-hostperf" / "html"


def render_html(report: Mapping[str, Any], baselines: BaselineView | None = None) -> str:
    """The whole HTML document for a JSON report dict."""
    if not isinstance(report, Mapping) or not isinstance(report.get("results"), list):
        raise HtmlReportError("not a pytest-hostperf JSON report (no \"results\" list): "
                              "make one with pytest --hostperf --hostperf-json=PATH")
    baselines = baselines or BaselineView(None)
    settings = report.get("settings") or {}
    tests = records_by_test(report["results"])
    figures: list[dict[str, Any]] = []
    body = [_header(report), _summary(report, tests, baselines)]
    for index, (test, records) in enumerate(tests.items()):
        tolerance = next((r["tolerance"] for r in records if isinstance(r.get("tolerance"), (int, float))),
                         settings.get("tolerance", 0.05))
        figure = figure_for_test(records, baselines.for_test(test), tolerance, report.get("session_id"))
        if figure["data"]:
            figures.append({"id": f"chart-{index}", "figure": figure})
            chart = (f'<div class="chart" id="chart-{index}" data-test="{_e(test)}" '
                     f'style="height: {figure["layout"]["height"]}px"></div>')
        else:
            chart = '<p class="none">Nothing was measured: see why below.</p>'
        body.append(_test_section(index, test, records, chart))
    return PAGE.format(
        title=html.escape(f"pytest-hostperf report {report.get('session_id') or ''}".strip()),
        style=STYLE, body="\n".join(body), plotly=packed_plotly(),
        figures=pack(json.dumps(figures, separators=(",", ":"))), loader=LOADER)


def write_html(report: Mapping[str, Any], path: Path, baselines_dir: Path | None = None) -> Path:
    """Render ``report`` (with the history from ``baselines_dir``) to ``path``."""
    text = render_html(report, read_baselines(report, baselines_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def records_by_test(records: Sequence[Record]) -> dict[str, list[Record]]:
    """The records grouped by test, in the report's order (a test's targets stay in order)."""
    tests: dict[str, list[Record]] = {}
    for record in records:
        tests.setdefault(str(record.get("test")), []).append(record)
    return tests


# -- sections -----------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


def _badge(name: str, count: int | None = None) -> str:
    text = name if count is None else f"{count} {name}"
    return f'<span class="badge v-{_e(name)}">{_e(text)}</span>'


def _header(report: Mapping[str, Any]) -> str:
    settings = report.get("settings") or {}
    facts = [f"session {report.get('session_id', '?')}", str(report.get("created", "")),
             f"environments {', '.join(settings.get('envs', []))}"]
    if isinstance(settings.get("tolerance"), (int, float)):
        facts.append(f"tolerance {settings['tolerance']:.0%}")
    if settings.get("alpha") is not None:
        facts.append(f"alpha {settings['alpha']} over {settings.get('comparisons', '?')} comparisons")
    return f'<header><h1>pytest-hostperf</h1><p class="facts">{_e(" · ".join(f for f in facts if f))}</p></header>'


def _summary(report: Mapping[str, Any], tests: Mapping[str, Sequence[Record]], baselines: BaselineView) -> str:
    records = report["results"]
    anchors = {id(r): f"t{i}" for i, rs in enumerate(tests.values()) for r in rs}
    counts = " ".join(_badge(name, count) for name, count in verdict_counts(records).items())
    failed = [f'<li><a href="#{anchors[id(r)]}">{_e(r.get("item") or r.get("test"))}</a>: '
              f"{_e(one_line_reason(r))}</li>" for r in failures(records)]
    uncovered = not_covered(report, baselines.other_fingerprints) + baselines.problems
    rows = []
    for env in environments(report):
        mounts = ", ".join(f"{name}: {fs}" for name, fs in env.mounts.items()) or "-"
        ready = f"{env.startup_s:.1f} s" if isinstance(env.startup_s, (int, float)) else "-"
        what = env.description or "-"
        if env.problem:
            what = f'<span class="problem">{_e(env.problem)}</span> {_e(what)}'
        else:
            what = _e(what)
        rows.append(f"<tr><td>{_e(env.name)}</td><td>{what}</td><td>{_e(env.engine or '-')}</td>"
                    f"<td>{_e(mounts)}</td><td><code>{_e(env.fingerprint_id or '-')}</code></td><td>{ready}</td></tr>")
    return (
        f'<section id="summary"><p class="counts">{counts or "no results"}</p>'
        f'<h2>Failed</h2>{_list(failed, "Nothing failed.")}'
        f'<h2>Not covered by the gate</h2>{_list([f"<li>{_e(u)}</li>" for u in uncovered], "Everything was gated.")}'
        '<h2>Environments</h2><table><thead><tr><th>environment</th><th>what it is</th><th>engine / accelerator</th>'
        f'<th>mounts (filesystem inside)</th><th>fingerprint</th><th>ready in</th></tr></thead><tbody>{"".join(rows)}'
        '</tbody></table></section>')


def _list(items: Sequence[str], empty: str) -> str:
    return f"<ul>{''.join(items)}</ul>" if items else f'<p class="none">{_e(empty)}</p>'


def _ratio_cell(ratio: Mapping[str, Any] | None, digits: int = 3) -> str:
    interval = ratio_interval(ratio)
    if interval is None:
        return "-"
    value, low, high = interval
    return f"{value:.{digits}f}x [{low:.{digits}f}, {high:.{digits}f}]"


def _test_section(index: int, test: str, records: Sequence[Record], chart: str) -> str:
    has_against = any(r.get("against") for r in records)
    has_instructions = any(r.get("instructions") for r in records)
    head = ["target", "filesystem", "median", "vs baseline [CI]", "vs native [CI]"]
    head += ["A/B [CI]"] * has_against + ["instructions"] * has_instructions + ["verdict", "why"]
    rows = []
    for r in records:
        fs = next((str(i.get("fstype")) for i in (r.get("mount_info") or {}).values() if i.get("fstype")), "")
        median = format_seconds(r["median_s"]) if isinstance(r.get("median_s"), (int, float)) else "-"
        cells = [_e(r.get("target")), _e(fs or "-"), _e(median), _e(_ratio_cell(r.get("ratio_to_baseline"))),
                 _e(_ratio_cell(r.get("ratio_to_native"), 2))]
        if has_against:
            cells.append(_e(_ratio_cell(r.get("against"))))
        if has_instructions:
            cells.append(_e(_instructions_cell(r)))
        reason = str(r.get("reason") or "")
        why = _e(one_line_reason(r))
        if reason and reason != one_line_reason(r):
            why = f"<details><summary>{why}</summary>{_e(reason)}</details>"
        numbers = "".join(f'<td class="n">{c}</td>' for c in cells)
        rows.append(f"<tr>{numbers}<td>{_badge(status(r))}</td><td>{why}</td></tr>")
    badges = " ".join(_badge(name, count) for name, count in verdict_counts(records).items())
    return (f'<section class="test" id="t{index}"><h2><code>{_e(test)}</code> {badges}</h2>'
            f"{chart}"
            f'<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _instructions_cell(record: Record) -> str:
    counted = record.get("instructions")
    if not isinstance(counted, Mapping):
        return "-"
    parts = []
    if isinstance(counted.get("per_call"), (int, float)):
        parts.append(f"{counted['per_call']:,.0f}/call")
    if isinstance(counted.get("ratio_to_baseline"), (int, float)):
        parts.append(f"{counted['ratio_to_baseline']:.4f}x")
    if record.get("attribution"):
        parts.append(f"({record['attribution']})")
    return " ".join(parts) or "-"


# -- the page -----------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
<p id="chart-status">Unpacking the charts…</p>
<noscript><p>The charts need JavaScript; the tables hold every number.</p></noscript>
<script type="application/octet-stream" id="plotly-gzip-base64">{plotly}</script>
<script type="application/octet-stream" id="hostperf-figures-gzip-base64">{figures}</script>
<script>{loader}</script>
</body></html>
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 0 18px 40px; color: #222; }
h1 { margin: 18px 0 2px; font-size: 22px; } h2 { font-size: 16px; margin: 22px 0 6px; }
.facts, .none { color: #666; } code { font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0 10px; width: 100%; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 13px; }
th { background: #f6f6f6; font-weight: 600; } details summary { cursor: pointer; }
.badge { display: inline-block; border-radius: 9px; padding: 0 8px; font-size: 12px; font-weight: 600;
         background: #e8e8e8; color: #333; white-space: nowrap; }
.v-regression, .v-overhead, .v-failed, .v-error { background: #d62728; color: #fff; }
.v-unstable { background: #ff7f0e; color: #fff; } .v-inconclusive { background: #bcbd22; color: #fff; }
.v-improvement, .v-pass { background: #2ca02c; color: #fff; }
.v-no-baseline, .v-skipped { background: #999; color: #fff; }
.counts .badge { font-size: 14px; padding: 2px 10px; margin-right: 4px; }
section.test { border-top: 2px solid #ddd; margin-top: 26px; } .chart { width: 100%; }
.problem { color: #d62728; } td.n { white-space: nowrap; } #chart-status { color: #666; }
"""

# Unpack plotly.js and the figures with the browser's own gzip (DecompressionStream), then draw
# each chart when it comes near the screen (~0.3 s a chart here: a report of a hundred tests
# drawn at once would keep the page busy for half a minute). The tables and the chart boxes,
# sized in advance, are there from the start, so nothing jumps while charts appear.
LOADER = """
async function unpack(id) {
  const bytes = Uint8Array.from(atob(document.getElementById(id).textContent), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).text();
}
function fail(error) {
  const status = document.getElementById("chart-status");
  status.textContent = "The charts could not be drawn in this browser (" + error + "); the tables hold every number.";
  status.hidden = false;
  document.body.dataset.chartsReady = "error";
  console.error(error);
}
(async function () {
  const library = document.createElement("script");
  library.textContent = await unpack("plotly-gzip-base64");
  document.head.appendChild(library);
  const figures = new Map(JSON.parse(await unpack("hostperf-figures-gzip-base64")).map((f) => [f.id, f.figure]));
  let drawn = 0, queue = Promise.resolve();
  const ready = () => { if (drawn === figures.size) document.body.dataset.chartsReady = String(drawn); };
  const draw = (id) => {
    queue = queue.then(async () => {
      const figure = figures.get(id);
      await Plotly.newPlot(id, figure.data, figure.layout, {displaylogo: false, responsive: true});
      drawn += 1;
      document.body.dataset.chartsDrawn = String(drawn);
      ready();
      await new Promise((resolve) => setTimeout(resolve, 0));   // let the page answer between charts
    }).catch(fail);
  };
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) { observer.unobserve(entry.target); draw(entry.target.id); }
    }
  }, {rootMargin: "1200px 0px"});
  for (const id of figures.keys()) observer.observe(document.getElementById(id));
  document.getElementById("chart-status").hidden = true;
  ready();
})().catch(fail);
"""
