"""The Markdown report (``--hostperf-markdown``, ``$GITHUB_STEP_SUMMARY``) from the JSON report dict.

Laid out for a pull request page: the table, then what needs attention as one line per
item (the same lines as the terminal's), then the whole reasons folded away.
"""

from __future__ import annotations

from typing import Any, Mapping

from pytest_hostperf.report.summary import one_line_reason
from pytest_hostperf.report.terminal import columns, explained, footer, rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(data: Mapping[str, Any]) -> str:
    head = columns(data)
    out = ["## pytest-hostperf", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(data):
        cells = [_cell(c) for c in row]
        cells[0] = f"`{cells[0]}`"
        if row[-1] in ("regression", "overhead"):
            cells[-1] = f"**{row[-1]}**"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.extend(f"- {line}" for line in footer(data))
    items = explained(data)
    if items:
        out += ["", "### Needs a look", ""]
        out += [f"- **{r.get('verdict') or r.get('outcome')}** `{r['item']}`: {one_line_reason(r)}" for r in items]
        out += ["", "<details><summary>Full reasons</summary>", ""]
        out += [f"- `{r['item']}`: {' '.join(str(r.get('reason') or '').split())}" for r in items]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"
