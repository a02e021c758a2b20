"""Typed results of a gradient check: per mismatch, per check, per case, per run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, NOTE, SKIP = "pass", "fail", "note", "skip"


@dataclass
class Mismatch:
    """One Jacobian entry d output[output_index] / d input[input_index] that disagrees.

    ``analytic`` is what backward computed, ``numeric`` the central finite difference
    (float64). ``context`` says where it was seen (e.g. "batch size 3", "x100").
    """

    input: str
    input_index: tuple[int, ...]
    output: str
    output_index: tuple[int, ...] | None
    analytic: float
    numeric: float
    context: str = ""

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    def formatted(self) -> tuple[str, str]:
        """``(analytic, numeric)`` as printed: 6 significant digits, more when needed to
        show that the two differ (a reported mismatch never prints two equal values)."""
        for digits in (6, 9, 12, 17):
            a, n = f"{self.analytic:.{digits}g}", f"{self.numeric:.{digits}g}"
            if a != n:
                break
        return a, n

    def describe(self) -> str:
        where = f"d {self.output}{list(self.output_index) if self.output_index is not None else ''}"
        a, n = self.formatted()
        text = f"{where} / d {self.input}{list(self.input_index)}: analytic {a}, numeric {n}"
        return text + (f" ({self.context})" if self.context else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_index"] = list(self.input_index)
        d["output_index"] = None if self.output_index is None else list(self.output_index)
        d["abs_error"] = self.abs_error
        return d


@dataclass
class CheckResult:
    """One check on one case: status, worst relative error, and for failures where and how."""

    name: str
    status: str
    message: str = ""
    max_rel_error: float | None = None
    pattern: str | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "max_rel_error": self.max_rel_error,
            "pattern": self.pattern,
            "locations": [m.to_dict() for m in self.mismatches],
            "notes": list(self.notes),
        }


@dataclass
class CaseResult:
    """All checks of one case, in the order they ran; ``seconds`` is wall time."""

    name: str
    checks: list[CheckResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r} (have {[c.name for c in self.checks]})")

    def failure_text(self) -> str:
        """Plain-text account of the failures: check, pattern, and the located entries."""
        lines = [f"case {self.name}: {len(self.failures)} check(s) failed"]
        for c in self.failures:
            lines.append(f"  {c.name}: {c.message}")
            if c.pattern:
                lines.append(f"    pattern: {c.pattern}")
            for m in c.mismatches:
                lines.append("    " + m.describe())
            lines += ["    " + n for n in c.notes if n]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": PASS if self.passed else FAIL,
            "seconds": round(self.seconds, 4),
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass
class GradCheckReport:
    """Every case of a run (a layer file or one API call)."""

    cases: list[CaseResult]
    source: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": PASS if self.passed else FAIL,
            "passed": sum(c.passed for c in self.cases),
            "failed": sum(not c.passed for c in self.cases),
            "cases": [c.to_dict() for c in self.cases],
        }
