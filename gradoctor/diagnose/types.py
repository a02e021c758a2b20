"""The diagnosis record (a contract: its keys and codes are stable and documented)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
CODES = (
    "nonfinite_loss",
    "nonfinite_origin",
    "exploding_gradients",
    "vanishing_gradients",
    "dead_units",
    "frequent_overflow",
    "loss_scale_collapse",
    "update_ratio_high",
    "update_ratio_low",
    "loss_divergence",
    "fp16_headroom",
    "memory",
    "edge_of_stability",
    "bad_initial_loss",
    "exploding_activations",
    # the numerics audit's codes (gradoctor audit; numerics/findings.py)
    "naive_softmax",
    "naive_logsumexp",
    "log_of_softmax",
    "log_of_sigmoid",
    "naive_variance",
    "sqrt_at_zero",
    "unguarded_division",
    "log_of_zero",
    "overflow_risk",
    "underflow",
)


_KEYS = ("code", "severity", "modules", "steps", "message", "evidence", "fix")


@dataclass
class Diagnosis:
    """One finding, as a ``report.json`` ``diagnoses[]`` entry.

    Attributes:
        code (str): one of ``CODES`` (``internal`` for a rule that failed).
        severity (str): one of ``SEVERITIES``.
        message (str): what was found, one sentence.
        fix (str): what to do, as prose; it also holds every line of ``commands``, joined
            with ``"; "`` (the ``fix`` key predates ``commands`` and stays complete).
        modules (list[str]): qualified names from ``named_modules()``, most implicated first.
        steps (list[int]): the steps where it was seen.
        evidence (dict[str, Any]): the numbers behind it (bytes, ratios, steps).
        commands (list[str]): the lines of ``fix`` that run something (``rerun with gradoctor
            train ...``, ``measure a plan: gradoctor memory-profile ...``), each exactly as it
            appears in ``fix``; the terminal prints them apart, unwrapped, so they paste as
            they are. Empty for a fix that is prose only.
    """

    code: str
    severity: str
    message: str
    fix: str
    modules: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report entry: ``code, severity, modules, steps, message, evidence, fix`` in
        that order, then ``commands`` only when there are some (a report of a run without
        commands has exactly the keys it had before the field existed).

        Returns:
            dict[str, Any]: a new dict (lists and evidence copied).
        """
        data = asdict(self)
        out = {key: data[key] for key in _KEYS}
        if self.commands:
            out["commands"] = data["commands"]
        return out


def fix_text(prose: list[str], commands: list[str]) -> str:
    """The ``fix`` of a diagnosis whose fix runs something: its prose, then its commands.

    Args:
        prose (list[str]): what to do, in words (may be empty).
        commands (list[str]): the ``Diagnosis.commands`` lines.

    Returns:
        str: every part, in that order, joined with ``"; "``.
    """
    return "; ".join([*prose, *commands])


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def ranked(diagnoses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first; stable within a severity."""
    return sorted(diagnoses, key=lambda d: -severity_rank(d["severity"]))


def at_or_above(diagnoses: list[dict[str, Any]], level: str) -> bool:
    """True when any diagnosis is at least ``level`` (``never`` is never reached)."""
    if level == "never":
        return False
    return any(severity_rank(d["severity"]) >= severity_rank(level) for d in diagnoses)
