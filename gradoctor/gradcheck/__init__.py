"""``gradoctor check-grads``: prove a custom layer's gradients right, or locate the bug.

Public API: :class:`Case`, :func:`check_grads`, :func:`assert_grads_correct`,
:func:`check_file`; results are :class:`CaseResult` / :class:`GradCheckReport`.
``Case(..., surrogate=fn)`` declares a straight-through estimator (its backward is checked
against finite differences of ``fn``, not of the forward).
"""

from gradoctor.gradcheck.api import (
    GradCheckFailed,
    assert_grads_correct,
    check_file,
    check_grads,
    run_case,
)
from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.result import CaseResult, CheckResult, GradCheckReport, Mismatch

__all__ = [
    "Case",
    "CaseResult",
    "CheckResult",
    "GradCheckFailed",
    "GradCheckReport",
    "Mismatch",
    "assert_grads_correct",
    "check_file",
    "check_grads",
    "run_case",
]
