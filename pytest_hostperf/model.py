"""The one measurement model: what a (test, environment, mount) produced and how it was judged.

Every part of the tool speaks this shape: the run loop builds a :class:`Record` once per
item, the reports write it (``to_json``), ``hostperf compare`` reads it back
(``from_json``), and the baselines save what it measured. Pure: stdlib only.

The JSON form is the record of the ``--hostperf-json`` report (schema version
:data:`REPORT_SCHEMA_VERSION`); reading accepts records with only the fields an older or
hand-made report has (``test``, ``env``, ``samples``), the rest take their defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Final, Mapping, Sequence

from pytest_hostperf.sampling import thin

#: Version of the JSON report; version 1 records read unchanged (new fields are optional).
REPORT_SCHEMA_VERSION: Final = 1
#: Raw samples kept per record in a report: enough to re-judge it with ``hostperf compare``.
REPORT_SAMPLES: Final = 1000


class Outcome(str, enum.Enum):
    """How running the test body went, before any judging."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ERROR = "error"


class Verdict(str, enum.Enum):
    """What the gate concluded about one measurement."""

    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    OVERHEAD = "overhead"
    INCONCLUSIVE = "inconclusive"
    UNSTABLE = "unstable"
    NO_BASELINE = "no-baseline"

    @property
    def fails(self) -> bool:
        return self in (Verdict.REGRESSION, Verdict.OVERHEAD)


class Attribution(str, enum.Enum):
    """Whether a change comes from the code, the platform, both or neither (instruction counts)."""

    CODE = "code"
    PLATFORM = "platform"
    BOTH = "both"
    NONE = "none"


class RecordError(ValueError):
    """A record (or a value in it) that cannot be what it claims; names the field."""


@dataclasses.dataclass(frozen=True)
class SessionSummary:
    """What one session measured for one benchmark, as kept in a baseline."""

    median_s: float
    log_median_se: float    # standard error of log(median) from within-session spread
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "log_median_se": self.log_median_se, "rounds": self.rounds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "summary") -> SessionSummary:
        """Read and validate: a timing is positive and finite, a spread finite and >= 0."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected an object with median_s, log_median_se, rounds")
        return cls(positive(data.get("median_s"), f"{where}.median_s"),
                   non_negative(data.get("log_median_se"), f"{where}.log_median_se"),
                   count(data.get("rounds", 1), f"{where}.rounds"))


@dataclasses.dataclass(frozen=True)
class RatioEstimate:
    """A ratio (new/old, 1.10 = 10% slower) with its confidence interval and p-values."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    p_slower: float   # one-sided p-value of H0 "not slower" (ratio <= 1)
    p_faster: float   # one-sided p-value of H0 "not faster" (ratio >= 1)
    method: str
    pairs: int = 0    # paired estimates: the pairs it came from (0: two samples' medians)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> RatioEstimate:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected an object with ratio, ci_low, ci_high")
        nan = math.nan
        return cls(positive(data.get("ratio"), f"{where}.ratio"), positive(data.get("ci_low"), f"{where}.ci_low"),
                   positive(data.get("ci_high"), f"{where}.ci_high"), _float(data.get("confidence", nan)),
                   _float(data.get("p_slower", nan)), _float(data.get("p_faster", nan)), str(data.get("method", "")),
                   int(data.get("pairs") or 0))


@dataclasses.dataclass(frozen=True)
class Against:
    """Same-session A/B against a git revision (``--hostperf-against``), from pairs.

    ``ratio`` is working tree / REV (1.10: the working tree is 10% slower); ``p_value``
    the one-sided p of "not slower". Without a comparison (the test is absent at REV,
    fails there, or REV's environment could not start) only ``error`` and ``reason`` say why.
    """

    rev: str                                  # the full commit id
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    pairs: int = 0
    verdict: str | None = None                # a Verdict value: the paired judgement
    reason: str = ""
    error: str | None = None                  # "absent", or why REV's side failed
    confidence: float | None = None
    spread: float | None = None               # robust SD of the per-pair log ratios
    drift_p: float | None = None              # the drift guard's Kruskal-Wallis p
    batch_ratios: tuple[float, ...] = ()      # when the drift guard widened the interval
    p_faster: float | None = None             # the one-sided p of "not faster"

    def to_json(self) -> dict[str, Any]:
        return {"rev": self.rev, "ratio": self.ratio, "ci": list(self.ci) if self.ci else None,
                "p_value": self.p_value, "pairs": self.pairs, "verdict": self.verdict, "reason": self.reason,
                "error": self.error, "confidence": self.confidence, "spread": self.spread,
                "drift_p": self.drift_p, "batch_ratios": list(self.batch_ratios), "p_faster": self.p_faster}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Against:
        ci = data.get("ci")
        return cls(str(data["rev"]), _optional_float(data.get("ratio")),
                   (float(ci[0]), float(ci[1])) if ci else None, _optional_float(data.get("p_value")),
                   int(data.get("pairs") or 0), data.get("verdict"), str(data.get("reason") or ""),
                   data.get("error"), _optional_float(data.get("confidence")), _optional_float(data.get("spread")),
                   _optional_float(data.get("drift_p")), tuple(float(v) for v in data.get("batch_ratios") or ()),
                   _optional_float(data.get("p_faster")))


@dataclasses.dataclass(frozen=True)
class Instructions:
    """Instructions per call of the benchmarked function (``--hostperf-measure=instructions``).

    Counted under callgrind by a second agent of the environment; judged against the
    count saved for the same software fingerprint (``software_id``), not the CPU model.
    """

    per_call: float
    ratio_to_baseline: float | None = None
    noise: float | None = None          # two counts of the test in this session differ by this fraction
    verdict: str | None = None          # the count's own verdict: pass, regression, improvement, unstable
    reason: str = ""                    # "instructions +3.10%", or why there is no verdict
    software_id: str | None = None      # the software fingerprint the count belongs to
    baseline_per_call: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Instructions:
        return cls(positive(data.get("per_call"), "instructions.per_call"),
                   _optional_float(data.get("ratio_to_baseline")), _optional_float(data.get("noise")),
                   str(data["verdict"]) if data.get("verdict") else None, str(data.get("reason") or ""),
                   str(data["software_id"]) if data.get("software_id") else None,
                   _optional_float(data.get("baseline_per_call")))


@dataclasses.dataclass(frozen=True)
class Record:
    """Everything about one item: what ran where, what it measured, what the gate said."""

    test: str                       # node id as the agent knows it (no environment part)
    env: str                        # "native", "docker", "ssh:HOST", ...
    mount: str | None = None        # None: the test does not use hostperf_dir
    item: str = ""                  # the controller's node id, e.g. "t.py::test_x[docker-bind]"
    target: str = ""                # the id part: "docker-bind"
    outcome: Outcome = Outcome.PASSED
    verdict: Verdict | None = None
    reason: str = ""
    samples: tuple[float, ...] = ()  # seconds per iteration, every round of the judged attempt
    iterations: int = 1
    summary: SessionSummary | None = None
    ratio_to_baseline: RatioEstimate | None = None
    ratio_to_native: RatioEstimate | None = None
    baseline_sessions: int = 0
    between_session_sd: float | None = None
    host_slowdown: float | None = None
    baseline: str | None = None     # the baseline file judged against
    fingerprint_id: str | None = None
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mount_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The host's reference workload timed right before and right after the test.
    references: tuple[SessionSummary, ...] = ()
    orchestration_s: tuple[float, ...] = ()
    attempt_medians_s: tuple[float, ...] = ()  # when re-measured (--hostperf-confirm)
    accepted: str | None = None     # --hostperf-accept: why a failing verdict was accepted
    tolerance: float | None = None  # the slowdown this item tolerated (per test or the session's)
    max_overhead: float | None = None  # the budget its ratio to native was held to, if any
    blamed_on_host: bool = False    # a proven change reported `unstable` because the host was slow
    #: The agent's serialized pytest reports, for the controller to replay (not in the JSON report).
    reports: tuple[Mapping[str, Any], ...] = dataclasses.field(default=(), repr=False, compare=False)
    # Reserved for the features of the next stage; null until they fill them.
    against: Against | None = None
    instructions: Instructions | None = None
    attribution: Attribution | None = None

    @property
    def median_s(self) -> float | None:
        return self.summary.median_s if self.summary else None

    @property
    def p_value(self) -> float | None:
        return self.ratio_to_baseline.p_slower if self.ratio_to_baseline else None

    @property
    def fails(self) -> bool:
        """Whether this item fails the session (a failed body or a failing, unaccepted verdict)."""
        if self.outcome in (Outcome.FAILED, Outcome.ERROR):
            return True
        return self.verdict is not None and self.verdict.fails and self.accepted is None

    @property
    def mount_key(self) -> str:
        """The mount as baselines key it ("-" for tests without hostperf_dir)."""
        return self.mount or "-"

    @property
    def fstype(self) -> str | None:
        info = next(iter(self.mount_info.values()), None) if self.mount_info else None
        value = info.get("fstype") if isinstance(info, Mapping) else None
        return str(value) if value else None

    @property
    def mount_signature(self) -> str | None:
        """The mount's file system with the options that change timings (``nfs4 vers=4.2 ...``)."""
        from pytest_hostperf.fingerprint._mounts import mount_signature

        return mount_signature(next(iter(self.mount_info.values()), None) if self.mount_info else None)

    def to_json(self) -> dict[str, Any]:
        """The report record (schema version 1 plus optional fields)."""
        return {
            "test": self.test, "item": self.item or self.test, "env": self.env,
            "target": self.target or self.env, "mount": self.mount,
            "outcome": self.outcome.value, "verdict": self.verdict.value if self.verdict else None,
            "reason": self.reason, "median_s": self.median_s,
            "log_median_se": self.summary.log_median_se if self.summary else None,
            "rounds": self.summary.rounds if self.summary else 0, "iterations": self.iterations,
            "samples": thin(self.samples, REPORT_SAMPLES),
            "ratio_to_baseline": _json_or_none(self.ratio_to_baseline),
            "ratio_to_native": _json_or_none(self.ratio_to_native),
            "p_value": self.p_value, "baseline_sessions": self.baseline_sessions,
            "between_session_sd": self.between_session_sd, "host_slowdown": self.host_slowdown,
            "baseline": self.baseline, "fingerprint_id": self.fingerprint_id,
            "fingerprint": dict(self.fingerprint), "mount_info": dict(self.mount_info),
            "references": [r.to_json() for r in self.references],
            "orchestration_ms": [round(v * 1000, 3) for v in self.orchestration_s],
            "attempt_medians_s": list(self.attempt_medians_s), "accepted": self.accepted,
            "tolerance": self.tolerance, "max_overhead": self.max_overhead, "blamed_on_host": self.blamed_on_host,
            "against": _json_or_none(self.against), "instructions": _json_or_none(self.instructions),
            "attribution": self.attribution.value if self.attribution else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """A record from a report; raises :class:`RecordError` naming the bad field."""
        if not isinstance(data, Mapping):
            raise RecordError("a result must be a JSON object")
        try:
            samples = tuple(positive(x, "samples[]") for x in data.get("samples") or ())
            summary = None
            if samples:
                summary = _summary_of(data, samples)
            ratios = {key: RatioEstimate.from_json(data[key], key) if data.get(key) else None
                      for key in ("ratio_to_baseline", "ratio_to_native")}
            return cls(
                test=_text(data, "test"), env=_text(data, "env"), mount=data.get("mount") or None,
                item=str(data.get("item") or ""), target=str(data.get("target") or ""),
                outcome=Outcome(data.get("outcome") or "passed"),
                verdict=Verdict(data["verdict"]) if data.get("verdict") else None,
                reason=str(data.get("reason") or ""), samples=samples,
                iterations=int(data.get("iterations") or 1), summary=summary,
                ratio_to_baseline=ratios["ratio_to_baseline"], ratio_to_native=ratios["ratio_to_native"],
                baseline_sessions=int(data.get("baseline_sessions") or 0),
                between_session_sd=_optional_float(data.get("between_session_sd")),
                host_slowdown=_optional_float(data.get("host_slowdown")),
                baseline=data.get("baseline"), fingerprint_id=data.get("fingerprint_id"),
                fingerprint=dict(data.get("fingerprint") or {}), mount_info=dict(data.get("mount_info") or {}),
                references=tuple(SessionSummary.from_json(r, "references[]") for r in data.get("references") or ()),
                orchestration_s=tuple(float(v) / 1000 for v in data.get("orchestration_ms") or ()),
                attempt_medians_s=tuple(float(v) for v in data.get("attempt_medians_s") or ()),
                accepted=data.get("accepted"), tolerance=_optional_float(data.get("tolerance")),
                max_overhead=_optional_float(data.get("max_overhead")),
                blamed_on_host=bool(data.get("blamed_on_host")),
                against=Against.from_json(data["against"]) if data.get("against") else None,
                instructions=Instructions.from_json(data["instructions"]) if data.get("instructions") else None,
                attribution=Attribution(data["attribution"]) if data.get("attribution") else None,
            )
        except RecordError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{type(exc).__name__}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class EnvironmentReport:
    """One environment of the session, as the report's ``environments`` section shows it."""

    name: str
    fingerprint_id: str | None = None
    startup_s: float | None = None
    orchestration_ms_median: float | None = None
    error: str | None = None            # why it could not start
    baseline_error: str | None = None   # why its baseline could not be read
    baseline: str | None = None         # the baseline file this fingerprint would use
    uncovered: str | None = None        # why the gate had no baseline here (one line)
    #: Where the tests' modules came from here and how that differs from native
    #: (``{"modules": {...}, "mismatches": [...]}``, see :mod:`pytest_hostperf.run.codecheck`).
    code: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["name"]
        return data


def _summary_of(data: Mapping[str, Any], samples: Sequence[float]) -> SessionSummary:
    """The record's own summary when it has one, else a plain median of its samples.

    A record without ``log_median_se`` (an older or hand-made report) gets a NaN spread:
    unknown, and never used to judge (``hostperf compare`` re-summarizes the samples).
    """
    if data.get("median_s") is not None and data.get("log_median_se") is not None:
        return SessionSummary.from_json(data, "record")
    ordered = sorted(samples)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return SessionSummary(median, math.nan, len(ordered))


def positive(value: Any, where: str) -> float:
    """``value`` as a positive finite float, or :class:`RecordError` naming ``where``."""
    number = _float(value, where)
    if not (math.isfinite(number) and number > 0):
        raise RecordError(f"{where} is {value!r}; expected a positive finite number")
    return number


def non_negative(value: Any, where: str) -> float:
    number = _float(value, where)
    if not (math.isfinite(number) and number >= 0):
        raise RecordError(f"{where} is {value!r}; expected a finite number >= 0")
    return number


def count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecordError(f"{where} is {value!r}; expected a whole number >= 1")
    return value


def _float(value: Any, where: str = "value") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{where} is {value!r}; expected a number")
    return float(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RecordError(f"{key!r} is missing or not a string")
    return value


def _json_or_none(value: Any) -> Any:
    return None if value is None else value.to_json()


__all__ = ["REPORT_SCHEMA_VERSION", "REPORT_SAMPLES", "Outcome", "Verdict", "Attribution", "RecordError",
           "SessionSummary", "RatioEstimate", "Against", "Instructions", "Record", "EnvironmentReport", "thin",
           "positive", "non_negative", "count"]
