"""Check 5: input ranges beyond the example's own scale.

The floating inputs (not the parameters) are scaled by x10, x100 and x1e-3 and the
first-order comparison is repeated (probes) at each, so branches for large |x| (a stable
softplus, a clamp) are exercised. Scales where the float64 outputs are not finite are
reported and skipped (outside the function's domain).
"""

from __future__ import annotations

from gradoctor.gradcheck.checks.common import CheckContext, from_comparison, guarded
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult
from gradoctor.gradcheck.target import FlatFunction, is_float_tensor

NAME = "input ranges"
SCALES = (10.0, 100.0, 1e-3)
# A disagreement this small, only at small inputs, is the signature of a forward that stops
# an iteration at an absolute tolerance: relative to small outputs it is less converged, and
# finite differences of it are biased by that (the same at every step, so no step removes it).
TOLERANCE_BIAS = 1e-3
TOLERANCE_HINT = (
    "if the forward iterates to an absolute tolerance (a fixed-point / DEQ layer, an iterative "
    "solver), its finite differences carry that tolerance: declare the converged solve as the "
    'surrogate (Case(..., surrogate=fn) or gradoctor_case = {"surrogate": fn})'
)


def scaled_inputs(case, scale: float) -> tuple:
    return tuple(a.detach() * scale if is_float_tensor(a) else a for a in case.inputs)


def run(ctx: CheckContext) -> list[CheckResult]:
    if not any(s.kind == "input" for s in ctx.target.slots):
        return [CheckResult(NAME, NOTE, "skipped: no floating-point tensor input")]
    return guarded(NAME, lambda: [_check(ctx)])


def _check(ctx: CheckContext) -> CheckResult:
    checked, skipped, worst = [], [], 0.0
    for scale in SCALES:
        label = f"x{scale:g}"
        try:
            fn = FlatFunction(ctx.derived(scaled_inputs(ctx.case, scale)))
        except (RuntimeError, ValueError) as exc:  # the forward rejects this range itself
            skipped.append(f"{label} (forward raised {type(exc).__name__})")
            continue
        comp = ctx.compare(fn, context=f"inputs {label}")
        if comp.mode == "non-finite":
            skipped.append(label)
            continue
        worst = max(worst, comp.max_rel_error)
        if not comp.ok:
            pattern = None
            if ctx.first_order_ok:
                pattern = "only at large magnitudes" if scale > 1 else "only at small magnitudes"
                if scale < 1 and comp.max_rel_error < TOLERANCE_BIAS:
                    pattern += f" (max relative {comp.max_rel_error:.2g}): {TOLERANCE_HINT}"
            return from_comparison(
                NAME, comp, fn, ctx, context_pattern=pattern, what=f"inputs {label}"
            )
        checked.append(label)
    status = PASS if checked else NOTE
    msg = f"checked at {', '.join(checked) or 'no scale'}"
    if skipped:
        msg += f"; skipped {', '.join(skipped)}: outputs not finite or inputs rejected"
    return CheckResult(NAME, status, msg, max_rel_error=worst)


__all__ = ["run", "FAIL"]
