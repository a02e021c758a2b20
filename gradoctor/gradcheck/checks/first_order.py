"""Check 1: first-order gradients against central differences at the example inputs.

Full Jacobian when ``2N + M`` calls are affordable, Rademacher probes plus bisection
otherwise (see ``gradoctor.gradcheck.jacobian``). For a case with a declared ``surrogate``
(a straight-through estimator) the differences are of the surrogate, and the result says so.
"""

from __future__ import annotations

from gradoctor.gradcheck.checks.common import (
    CheckContext,
    from_comparison,
    guarded,
    surrogate_note,
)
from gradoctor.gradcheck.result import CheckResult

NAME = "first order"


def run(ctx: CheckContext) -> list[CheckResult]:
    def body() -> list[CheckResult]:
        fn = ctx.flat()
        comp = ctx.compare(fn, context="", mode="probes" if ctx.fast else "auto")
        return [from_comparison(NAME, comp, fn, ctx, what=surrogate_note(ctx))]

    results = guarded(NAME, body)
    ctx.first_order_ok = results[0].status != "fail"
    return results
