"""One plotly figure per test, as plain data: what the HTML report draws. Pure, no pytest.

A figure is the ``{"data": [...], "layout": {...}}`` that ``Plotly.newPlot`` takes. It is
built as dicts rather than through ``plotly.graph_objects``, whose validation costs ~0.1 s
a figure; the tests validate every panel against plotly's schema instead.

Panels, each drawn only when the records carry its data; rows are the test's targets
(environment-mount) in the order of the report:

* distribution: every round's time, a box of all samples with up to
  :data:`STRIP_POINTS` rounds strewn over it, on a log time axis;
* overhead: the ratio to native with its confidence interval and, when the record
  names it (``max_overhead``), the budget that applied;
* history: the saved session medians over the baseline's mean (the gate's centre), the
  tolerance band, and this session with its interval;
* A/B: the ratio to ``--hostperf-against``'s revision with its interval, the tolerance
  band, and the per-pair ratios when the record carries them as a list;
* instructions: instructions per call against the baseline, with the noise floor.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Callable, Mapping, Sequence

from pytest_hostperf.baselines import SavedSession
from pytest_hostperf.report.summary import Record, ratio_interval, status
from pytest_hostperf.report.terminal import format_seconds
from pytest_hostperf.sampling import thin

#: Rounds drawn as points per target: enough to see modes and outliers, small files.
STRIP_POINTS = 150
#: Pixels per target row, and below each panel row (tick labels, the next title).
ROW_PX, PANEL_GAP_PX = 26, 85
ENV_COLOURS = {"native": "#4c72b0", "docker": "#55a868", "qemu": "#c44e52", "ssh": "#8172b3"}
OTHER_COLOUR = "#937860"
VERDICT_COLOURS = {"regression": "#d62728", "overhead": "#d62728", "improvement": "#2ca02c",
                   "unstable": "#ff7f0e", "inconclusive": "#bcbd22"}
TITLES = {
    "distribution": "time per round (log)",
    "overhead": "ratio to native with CI; red bar: budget (log)",
    "history": "saved session medians / baseline mean; band: tolerance; ★ this session (log)",
    "against": "A/B: ratio to {rev} with CI; band: tolerance",
    "instructions": "instructions per call / baseline, ± noise",
}

Histories = Mapping[str, Sequence[SavedSession]]   # target id -> saved sessions, oldest first
Trace = dict[str, Any]


@dataclasses.dataclass
class Panel:
    """One subplot: its traces and shapes, and what its axes need beyond the defaults."""

    name: str
    traces: list[Trace]
    shapes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    x_axis: dict[str, Any] = dataclasses.field(default_factory=dict)
    y_axis: dict[str, Any] | None = None   # None: the target rows


def colour(env: str) -> str:
    """The environment's colour: ``docker@qemu`` and ``ssh:host`` take their first part's."""
    return ENV_COLOURS.get(env.split(":", 1)[0].split("@", 1)[0], OTHER_COLOUR)


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def box_stats(samples: Sequence[float]) -> dict[str, float]:
    """Quartiles and Tukey whiskers (the farthest samples within 1.5 IQR) of all samples."""
    ordered = sorted(samples)
    if len(ordered) < 2:
        only = ordered[0]
        return {"q1": only, "median": only, "q3": only, "lowerfence": only, "upperfence": only}
    q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    reach = 1.5 * (q3 - q1)
    low = next(x for x in ordered if x >= q1 - reach)
    high = next(x for x in reversed(ordered) if x <= q3 + reach)
    return {"q1": q1, "median": median, "q3": q3, "lowerfence": low, "upperfence": high}


def jitter(count: int, width: float = 0.5) -> list[float]:
    """Offsets in ``[-width/2, width/2)`` spread evenly (golden ratio), the same every render."""
    return [((k * 0.6180339887) % 1.0 - 0.5) * width for k in range(count)]


def log_axis(values: Sequence[float], label: Callable[[float], str]) -> dict[str, Any]:
    """A log axis over ``values`` with ticks at 1-2-5 steps (only powers of ten if that is many)."""
    low, high = min(values), max(values)
    if not (low > 0 and math.isfinite(high)):
        return {"type": "log"}
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in steps if low <= m * 10.0 ** e <= high]
    if len(ticks) < 2:
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in range(1, 10)
                 if low <= m * 10.0 ** e <= high]
    pad = 0.06 * max(math.log10(high / low), 0.2)
    return {"type": "log", "range": [math.log10(low) - pad, math.log10(high) + pad], "tickmode": "array",
            "tickvals": [_round(t) for t in ticks], "ticktext": [label(t) for t in ticks]}


def _times(value: float) -> str:
    return f"{value:.3g}x"


def _hover(target: str, what: str) -> str:
    return f"<b>{target}</b><br>{what}<extra></extra>"


def _unity(x: str, y: str) -> dict[str, Any]:
    return {"type": "line", "xref": x, "yref": f"{y} domain", "x0": 1, "x1": 1, "y0": 0, "y1": 1,
            "line": {"color": "#888", "width": 1, "dash": "dot"}}


def _band(axis: str, low: float, high: float, other: str) -> dict[str, Any]:
    """A shaded band ``[low, high]`` along ``axis`` (an "x.." or "y.." id), across the panel."""
    along_x = axis.startswith("x")
    span = {"x0": low, "x1": high, "y0": 0, "y1": 1} if along_x else {"x0": 0, "x1": 1, "y0": low, "y1": high}
    return {"type": "rect", "layer": "below", "line": {"width": 0}, "fillcolor": "rgba(76,114,176,0.13)",
            "xref": axis if along_x else f"{other} domain", "yref": f"{other} domain" if along_x else axis, **span}


# -- panels ------------------------------------------------------------------------------------

def _distribution(records: Sequence[Record], x: str, y: str) -> Panel:
    """Boxes and strips, one box trace and one strip trace per environment (not per target):
    plotly's drawing time grows with the number of traces, and a report has hundreds."""
    boxes: dict[str, Trace] = {}
    strips: dict[str, Trace] = {}
    extremes: list[float] = []
    for row, r in enumerate(records):
        samples = [s for s in r.get("samples") or () if isinstance(s, (int, float)) and s > 0]
        if not samples:
            continue
        env, stats, shown = str(r["env"]), box_stats(samples), thin(samples, STRIP_POINTS)
        box = boxes.setdefault(env, {
            "type": "box", "orientation": "h", "y": [], "q1": [], "median": [], "q3": [], "lowerfence": [],
            "upperfence": [], "xaxis": x, "yaxis": y, "name": env, "marker": {"color": colour(env)},
            "line": {"width": 1.5}, "fillcolor": "rgba(255,255,255,0)", "width": 0.6, "hoverinfo": "x",
            "showlegend": False})
        box["y"].append(row)
        for key, value in stats.items():
            box[key].append(_round(value))
        strip = strips.setdefault(env, {
            "type": "scatter", "mode": "markers", "x": [], "y": [], "xaxis": x, "yaxis": y, "showlegend": False,
            "marker": {"color": colour(env), "size": 4, "opacity": 0.45},
            "hovertemplate": "round %{x:.3s}s<extra></extra>"})
        strip["x"] += [_round(s) for s in shown]
        strip["y"] += [round(row + j, 2) for j in jitter(len(shown))]
        extremes += [min(shown + [stats["lowerfence"]]), max(shown + [stats["upperfence"]])]
    return Panel("distribution", [*boxes.values(), *strips.values()],
                 x_axis=log_axis(extremes, format_seconds) if extremes else {})


def _interval_marks(records: Sequence[Record], ratio_of: Callable[[Record], Any], x: str, y: str,
                    label: str, verdicts: Sequence[str]) -> tuple[list[Trace], list[float]]:
    """One dot per record with its confidence interval as an error bar.

    Coloured by the verdict when it is one this comparison decides (``verdicts``), by
    environment otherwise: an ``unstable`` baseline says nothing about the overhead.
    """
    rows, values, above, below, tints, texts = [], [], [], [], [], []
    for row, r in enumerate(records):
        interval = ratio_interval(ratio_of(r))
        if interval is None:
            continue
        value, low, high = interval
        rows.append(row)
        values.append(_round(value))
        above.append(_round(max(0.0, high - value)))
        below.append(_round(max(0.0, value - low)))
        tints.append(VERDICT_COLOURS[status(r)] if status(r) in verdicts else colour(str(r["env"])))
        texts.append(f"<b>{r['target']}</b><br>{value:.3f}x {label} [{low:.3f}, {high:.3f}]<br>{status(r)}")
    if not rows:
        return [], []
    span = [v - b for v, b in zip(values, below)] + [v + a for v, a in zip(values, above)]
    return [{"type": "scatter", "mode": "markers", "x": values, "y": rows, "xaxis": x, "yaxis": y,
             "error_x": {"type": "data", "symmetric": False, "array": above, "arrayminus": below,
                         "thickness": 2, "width": 5, "color": "#444"},
             "marker": {"color": tints, "size": 10, "line": {"color": "#222", "width": 1}},
             "text": texts, "hovertemplate": "%{text}<extra></extra>", "showlegend": False}], span


def _overhead(records: Sequence[Record], x: str, y: str) -> Panel:
    traces, span = _interval_marks(records, lambda r: r.get("ratio_to_native"), x, y, "native", ("overhead",))
    budgets = [(row, float(r["max_overhead"])) for row, r in enumerate(records)
               if isinstance(r.get("max_overhead"), (int, float)) and r.get("ratio_to_native")]
    if budgets:
        traces.append({"type": "scatter", "mode": "markers", "x": [b for _, b in budgets],
                       "y": [row for row, _ in budgets], "xaxis": x, "yaxis": y, "showlegend": False,
                       "marker": {"symbol": "line-ns", "size": 22, "line": {"color": "#d62728", "width": 3}},
                       "hovertemplate": "budget %{x:.2f}x<extra></extra>"})
    span += [b for _, b in budgets] + [1.0]
    return Panel("overhead", traces, [_unity(x, y)], log_axis([s for s in span if s > 0], _times) if traces else {})


def _against(records: Sequence[Record], x: str, y: str, tolerance: float) -> Panel:
    traces: list[Trace] = []
    for row, r in enumerate(records):
        pairs = (r.get("against") or {}).get("pairs")
        if isinstance(pairs, (list, tuple)) and pairs:
            shown = thin([p for p in pairs if isinstance(p, (int, float)) and p > 0], STRIP_POINTS)
            traces.append({"type": "scatter", "mode": "markers", "x": [_round(p) for p in shown],
                           "y": [round(row + j, 2) for j in jitter(len(shown))], "xaxis": x, "yaxis": y,
                           "marker": {"color": colour(str(r["env"])), "size": 4, "opacity": 0.4},
                           "showlegend": False, "hovertemplate": _hover(r["target"], "pair %{x:.3f}x")})
    rev = against_rev(records)
    # With --hostperf-against the A/B decides the baseline verdicts (issue #10).
    marks, _ = _interval_marks(records, lambda r: r.get("against"), x, y, rev,
                               ("regression", "improvement", "inconclusive", "unstable"))
    traces += marks
    return Panel("against", traces, [_unity(x, y), _band(x, 1 / (1 + tolerance), 1 + tolerance, y)],
                 {"tickformat": ".3~f", "ticksuffix": "x"})


def against_rev(records: Sequence[Record]) -> str:
    """The A/B revision, short: the first 10 characters of its sha."""
    return next((str(r["against"].get("rev") or "")[:10] for r in records
                 if isinstance(r.get("against"), Mapping)), "REV")


def _instructions(records: Sequence[Record], x: str, y: str) -> Panel:
    rows, values, errors, texts = [], [], [], []
    for row, r in enumerate(records):
        counted = r.get("instructions")
        if not isinstance(counted, Mapping) or not isinstance(counted.get("ratio_to_baseline"), (int, float)):
            continue
        noise = float(counted["noise"]) if isinstance(counted.get("noise"), (int, float)) else 0.0
        ratio = float(counted["ratio_to_baseline"])
        rows.append(row)
        values.append(ratio)
        errors.append(abs(noise) * ratio)
        per_call = counted.get("per_call")
        calls = f"{per_call:,.0f} instructions/call<br>" if isinstance(per_call, (int, float)) else ""
        texts.append(f"<b>{r['target']}</b><br>{calls}{ratio:.4f}x baseline, noise {noise:.2%}"
                     f"<br>attribution: {r.get('attribution') or '-'}")
    if not rows:
        return Panel("instructions", [])
    trace = {"type": "scatter", "mode": "markers", "x": values, "y": rows, "xaxis": x, "yaxis": y,
             "error_x": {"type": "data", "array": errors, "thickness": 2, "width": 5, "color": "#444"},
             "marker": {"color": "#8172b3", "size": 10, "symbol": "diamond"}, "text": texts,
             "hovertemplate": "%{text}<extra></extra>", "showlegend": False}
    return Panel("instructions", [trace], [_unity(x, y)], {"tickformat": ".4~f", "ticksuffix": "x"})


def _this_session(nows: Sequence[tuple[int, Record, tuple[float, float, float]]], rows: int, at: int,
                  x: str, y: str) -> Trace:
    """Stars at ``at``, one per target, dodged apart, with their intervals; outlined by verdict."""
    values = [value for _, _, (value, _, _) in nows]
    return {"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "showlegend": False,
            "x": [_round(at + (row - (rows - 1) / 2) * min(0.08, 0.5 / rows)) for row, _, _ in nows],
            "y": [_round(v) for v in values],
            "error_y": {"type": "data", "symmetric": False, "thickness": 1, "width": 3, "color": "rgba(0,0,0,0.3)",
                        "array": [_round(high - value) for _, _, (value, _, high) in nows],
                        "arrayminus": [_round(value - low) for _, _, (value, low, _) in nows]},
            "marker": {"color": [colour(str(r["env"])) for _, r, _ in nows], "size": 14, "symbol": "star",
                       "line": {"color": [VERDICT_COLOURS.get(status(r), "#222") for _, r, _ in nows], "width": 2}},
            "text": [f"<b>{r['target']}</b><br>this session: {value:.3f}x [{low:.3f}, {high:.3f}]<br>{status(r)}"
                     for _, r, (value, low, high) in nows],
            "hovertemplate": "%{text}<extra></extra>"}


def _history(records: Sequence[Record], histories: Histories, x: str, y: str, tolerance: float,
             session_id: str | None) -> Panel:
    traces: list[Trace] = []
    nows: list[tuple[int, Record, tuple[float, float, float]]] = []
    shown: list[float] = [1 / (1 + tolerance), 1 + tolerance]
    longest = max((len([s for s in histories.get(str(r["target"]), ()) if s.session_id != session_id])
                   for r in records), default=0)
    for row, r in enumerate(records):
        # A session saved with --hostperf-save is in its own baseline file; the gate
        # judged it against the sessions before it.
        earlier = [s for s in histories.get(str(r["target"]), ()) if s.session_id != session_id]
        if not earlier:
            continue
        # The gate's centre: the geometric mean of the saved session medians (stats.compare_to_history).
        centre = math.exp(statistics.fmean(math.log(s.median_s) for s in earlier))
        tint = colour(str(r["env"]))
        offset = longest - len(earlier)   # the newest sessions of every target line up at the right
        ratios = [_round(s.median_s / centre) for s in earlier]
        traces.append({"type": "scatter", "mode": "lines+markers", "xaxis": x, "yaxis": y,
                       "x": [offset + i + 1 for i in range(len(earlier))], "y": ratios,
                       "line": {"color": tint, "width": 1}, "marker": {"color": tint, "size": 7},
                       "text": [f"{s.saved_at} · {format_seconds(s.median_s)}" for s in earlier],
                       "hovertemplate": _hover(r["target"], "%{text}<br>%{y:.3f}x mean"), "showlegend": False})
        shown += ratios
        now = ratio_interval(r.get("ratio_to_baseline"))
        if now is not None:
            nows.append((row, r, now))
            shown.append(now[0])
    if nows:
        traces.append(_this_session(nows, len(records), longest + 1, x, y))
    if len(shown) == 2:
        return Panel("history", [])
    # The range follows the medians, not the intervals: a noisy baseline's interval would
    # squash the history into a line (the interval is in the hover and the table).
    y_axis = log_axis([min(shown) / 1.15, max(shown) * 1.15], _times)
    ticks = list(range(1, longest + 2))
    x_axis = {"tickmode": "array", "tickvals": ticks, "ticktext": [str(t) for t in ticks[:-1]] + ["now"],
              "range": [0.5, longest + 1.5], "title": {"text": "saved sessions, oldest to newest", "standoff": 2}}
    return Panel("history", traces, [{"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1,
                                      "y0": 1, "y1": 1, "line": {"color": "#888", "width": 1, "dash": "dot"}},
                                     _band(y, 1 / (1 + tolerance), 1 + tolerance, x)], x_axis, y_axis)


# -- the figure --------------------------------------------------------------------------------

def figure_for_test(records: Sequence[Record], histories: Histories | None = None, tolerance: float = 0.05,
                    session_id: str | None = None) -> dict[str, Any]:
    """The plotly figure for one test's records (one per target), panels as their data allow."""
    builders: list[Callable[[str, str], Panel]] = [
        lambda x, y: _distribution(records, x, y),
        lambda x, y: _overhead(records, x, y),
        lambda x, y: _history(records, histories or {}, x, y, tolerance, session_id),
        lambda x, y: _against(records, x, y, tolerance),
        lambda x, y: _instructions(records, x, y),
    ]
    panels: list[Panel] = []
    for build in builders:
        suffix = str(len(panels) + 1) if panels else ""
        panel = build(f"x{suffix}", f"y{suffix}")
        if any(t.get("x") for t in panel.traces) or any(t.get("q1") for t in panel.traces):
            panels.append(panel)
    return {"data": [t for p in panels for t in p.traces],
            "layout": _layout(panels, [str(r["target"]) for r in records], against_rev(records))}


def _layout(panels: Sequence[Panel], targets: Sequence[str], rev: str) -> dict[str, Any]:
    """Panels on a grid of two columns; each panel row is as tall as its target rows need."""
    columns = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / columns))
    panel_px = max(150, ROW_PX * len(targets))
    plot_px = rows * (panel_px + PANEL_GAP_PX)
    layout: dict[str, Any] = {
        "height": plot_px + 54, "margin": {"l": 110, "r": 20, "t": 44, "b": 10}, "showlegend": False,
        "hovermode": "closest", "plot_bgcolor": "#fff", "paper_bgcolor": "#fff",
        "font": {"family": "system-ui, sans-serif", "size": 12},
        "shapes": [s for p in panels for s in p.shapes], "annotations": [],
    }
    common = {"showline": True, "linecolor": "#999", "gridcolor": "#eee", "zeroline": False}
    target_rows = {"tickmode": "array", "tickvals": list(range(len(targets))), "ticktext": list(targets),
                   "range": [len(targets) - 0.5, -0.5], "fixedrange": True, "showgrid": False}
    for index, panel in enumerate(panels):
        row, col = index // columns, index % columns
        top = 1.0 - row / rows
        left, right = (0.0, 1.0) if columns == 1 else ((0.0, 0.44) if col == 0 else (0.56, 1.0))
        suffix = str(index + 1) if index else ""
        layout[f"xaxis{suffix}"] = {"domain": [left, right], "anchor": f"y{suffix}", **common, **panel.x_axis}
        layout[f"yaxis{suffix}"] = {"domain": [top - panel_px / plot_px, top], "anchor": f"x{suffix}", **common,
                                    **(target_rows if panel.y_axis is None else panel.y_axis)}
        layout["annotations"].append({"text": f"<b>{TITLES[panel.name].format(rev=rev)}</b>", "xref": "paper",
                                      "yref": "paper", "x": left, "y": top, "xanchor": "left",
                                      "yanchor": "bottom", "showarrow": False, "font": {"size": 12}})
    return layout
