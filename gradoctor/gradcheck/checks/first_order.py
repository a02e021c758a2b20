"""Check 1: first-order gradients against central differences at the example inputs.

Full Jacobian when ``2N + M`` calls are affordable, Rademacher probes plus bisection
otherwise (see ``gradoctor.gradcheck.jacobian``).
"""

from __future__ import annotations

from gradoctor.gradcheck.checks.common import CheckContext, from_comparison, guarded
from gradoctor.gradcheck.result import CheckResult

NAME = "first order"


def run(ctx: CheckContext) -> list[CheckResult]:
    def body() -> list[CheckResult]:
        fn = ctx.flat()
        comp = ctx.compare(fn, context="", mode="probes" if ctx.fast else "auto")
        return [from_comparison(NAME, comp, fn, ctx)]

    results = guarded(NAME, body)
    ctx.first_order_ok = results[0].status != "fail"
    return results
