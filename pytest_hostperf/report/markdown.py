"""The Markdown report (``--hostperf-markdown``, ``$GITHUB_STEP_SUMMARY``) from the JSON report dict."""

from __future__ import annotations

from typing import Any, Mapping

from pytest_hostperf.report.terminal import COLUMNS, footer, rows


def render_markdown(data: Mapping[str, Any]) -> str:
    out = ["## pytest-hostperf", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(data):
        cells = [c.replace("|", "\\|") for c in row]
        cells[0] = f"`{cells[0]}`"
        if row[-1] in ("regression", "overhead"):
            cells[-1] = f"**{row[-1]}**"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.extend(f"- {line}" for line in footer(data))
    return "\n".join(out) + "\n"
