"""``update_ratio_high`` / ``update_ratio_low``: ||dW|| / ||W|| per module far from ~1e-3.

Median over the logged steps whose update was applied (skipped steps give 0 and are left out)."""

from __future__ import annotations

import numpy as np

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    th = ctx.thresholds
    medians = {}
    for module, ratios in ctx.history.update_ratio.items():
        values = np.asarray([r for r in ratios if np.isfinite(r) and r > 0])
        if len(values) >= 2:
            medians[module] = float(np.median(values))
    out = []
    high = sorted(((r, m) for m, r in medians.items() if r > th.update_ratio_high), reverse=True)
    low = sorted((r, m) for m, r in medians.items() if r < th.update_ratio_low)
    steps = ctx.history.update_ratio_steps
    if high:
        out.append(
            Diagnosis(
                code="update_ratio_high",
                severity="warning",
                message=f"'{high[0][1]}' changes by {high[0][0]:.2g} of its norm per step (usual: ~1e-3)",
                modules=[m for _, m in high],
                steps=steps[-3:],
                evidence={m: r for r, m in high} | {"threshold": th.update_ratio_high},
                fix="lower the learning rate (or this module's, via a parameter group); check weight decay",
            )
        )
    if low:
        out.append(
            Diagnosis(
                code="update_ratio_low",
                severity="warning",
                message=f"'{low[0][1]}' changes by only {low[0][0]:.2g} of its norm per step (usual: ~1e-3)",
                modules=[m for _, m in low],
                steps=steps[-3:],
                evidence={m: r for r, m in low} | {"threshold": th.update_ratio_low},
                fix="raise the learning rate, or check that this module's gradients are not vanishing or frozen",
            )
        )
    return out
