"""The JSON report (``--hostperf-json``): one record per (test, environment, mount)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from pytest_hostperf.baselines import dumps
from pytest_hostperf.model import REPORT_SCHEMA_VERSION, EnvironmentReport, Record, RecordError
from pytest_hostperf.settings import Settings

TOOL = "pytest-hostperf"


class ReportError(ValueError):
    """A file that is not a readable pytest-hostperf report; the message names it and the fix."""


def build_json(records: Iterable[Record], settings: Settings, environments: Iterable[EnvironmentReport], *,
               session_id: str, comparisons: int) -> dict[str, Any]:
    """The report dict: settings, environments, and every record in ``to_json`` form."""
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": TOOL,
        "session_id": session_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"envs": list(settings.envs), "tolerance": settings.tolerance, "alpha": settings.alpha,
                     "comparisons": comparisons, "baselines": str(settings.baselines_dir),
                     "blocks": settings.blocks, "strict": settings.strict, "measure": list(settings.measure),
                     "instructions_tolerance": settings.instructions_tolerance},
        "environments": {env.name: env.to_json() for env in environments},
        "results": [record.to_json() for record in records],
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(data), encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    """A report's dict, checked to be ours and of a version this code reads."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict) or data.get("tool") != TOOL or not isinstance(data.get("results"), list):
        raise ReportError(f"{path} is not a pytest-hostperf JSON report (make one with --hostperf-json=PATH)")
    version = data.get("schema_version", REPORT_SCHEMA_VERSION)
    if version != REPORT_SCHEMA_VERSION:
        raise ReportError(f"{path} has report schema_version {version!r}; this pytest-hostperf reads "
                          f"{REPORT_SCHEMA_VERSION}: use the version that wrote it")
    return data


def read_records(path: Path) -> list[Record]:
    """Every record of a report; a malformed one is a :class:`ReportError` naming its index."""
    records = []
    for index, raw in enumerate(read_json(path)["results"]):
        try:
            records.append(Record.from_json(raw))
        except RecordError as exc:
            raise ReportError(f"{path}: result #{index} is malformed ({exc}); "
                              "regenerate the report with --hostperf-json") from exc
    return records
