"""``frequent_overflow`` and ``loss_scale_collapse``: fp16 dynamic loss scaling gone wrong.

Normal rhythm: a run of skips at the start while the scale calibrates down from its initial
value, then one skip after each growth (every ``growth_interval`` clean steps). Anything
beyond that plus ``thresholds.overflow_tolerance`` is frequent; a scale at or below
``thresholds.collapse_scale`` or ``thresholds.collapse_skips`` consecutive skips after
calibration is a collapse."""

from __future__ import annotations

from collections import Counter

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis


def _modules(ctx: RunContext) -> list[str]:
    counts: Counter[str] = Counter()
    for event in ctx.history.overflow:
        for param in event["params"]:
            counts[param.rsplit(".", 1)[0] if "." in param else "(root)"] += 1
    return [m for m, _ in counts.most_common(5)]


def check(ctx: RunContext) -> list[Diagnosis]:
    if ctx.precision != "fp16":
        return []
    th = ctx.thresholds
    steps = ctx.steps()
    skipped = ctx.skipped_mask()
    if not len(steps):
        return []
    calibration = 0
    while calibration < len(skipped) and skipped[calibration]:
        calibration += 1
    post = skipped[calibration:]
    post_skips = [int(s) for s in steps[calibration:][post]]
    allowed = len(post) // ctx.growth_interval + 1 + th.overflow_tolerance
    run = longest = 0
    for s in post if len(post) else skipped:  # never calibrated: every step was skipped
        run = run + 1 if s else 0
        longest = max(longest, run)
    scales = [float(v) for v in ctx.history.loss_scale]
    min_scale = min(scales) if scales else None
    modules = _modules(ctx)
    origin = next(
        (f["replay"].get("module") for f in ctx.findings if f.get("replay", {}).get("module")), None
    )
    if origin:
        modules = [origin, *[m for m in modules if m != origin]]
    out = []
    evidence = {
        "calibration_skips": calibration,
        "post_calibration_skips": len(post_skips),
        "allowed": allowed,
        "longest_skip_run": longest,
        "min_scale": min_scale,
        "growth_interval": ctx.growth_interval,
    }
    where = f" (overflowing first in '{modules[0]}')" if modules else ""
    if (min_scale is not None and min_scale <= th.collapse_scale) or longest >= th.collapse_skips:
        out.append(
            Diagnosis(
                code="loss_scale_collapse",
                severity="error",
                message=f"the fp16 loss scale collapsed to {min_scale:.3g} with {longest} consecutive skipped steps{where}",
                modules=modules,
                steps=post_skips[:20] or [int(s) for s in steps[skipped]][:20],
                evidence=evidence,
                fix=f"use precision: bf16 (fp32's range, no scaler); or find why '{modules[0] if modules else 'the model'}' overflows "
                "(activations beyond 65504: add normalization, lower the learning rate)",
            )
        )
    elif len(post_skips) > allowed:
        out.append(
            Diagnosis(
                code="frequent_overflow",
                severity="warning",
                message=f"{len(post_skips)} fp16 steps were skipped after calibration (expected at most {allowed}){where}",
                modules=modules,
                steps=post_skips[:20],
                evidence=evidence,
                fix="use precision: bf16, lower the learning rate, or clip gradients; a larger grad_scaler.growth_interval "
                "reduces growth probes",
            )
        )
    return out
