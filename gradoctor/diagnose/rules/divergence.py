"""``loss_divergence``: the loss ending far above where it started, or rising steadily."""

from __future__ import annotations

import numpy as np

from gradoctor.diagnose.context import RunContext, spearman, window
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    losses, steps = ctx.losses(), ctx.steps()
    ok = np.isfinite(losses)
    losses, steps = losses[ok], steps[ok]
    if len(losses) < 8:
        return []
    w = window(losses, 0.05)
    init, last = float(np.median(losses[:w])), float(np.median(losses[-w:]))
    smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
    best = float(smooth.min())
    best_step = int(steps[int(smooth.argmin()) + w - 1])
    factor = ctx.thresholds.divergence_factor
    evidence = {"initial": init, "best": best, "best_step": best_step, "last": last}
    if last > init * factor and last - init > 1e-6 * max(1.0, abs(init)):
        return [
            Diagnosis(
                code="loss_divergence",
                severity="error",
                message=f"the loss diverged: {last:.4g} at the end vs {init:.4g} at the start (best {best:.4g} at step {best_step})",
                steps=[best_step, int(steps[-1])],
                evidence=evidence,
                fix="lower the learning rate (try 10x lower) or add warmup; set train.clip_grad_norm",
            )
        ]
    half = losses[len(losses) // 2 :]
    trend = spearman(half)
    progress = init - best
    if progress > 0 and last > best + 0.5 * progress and trend > 0.6:
        return [
            Diagnosis(
                code="loss_divergence",
                severity="warning",
                message=f"the loss has been rising since step {best_step}: {best:.4g} -> {last:.4g}",
                steps=[best_step, int(steps[-1])],
                evidence=evidence | {"trend": trend},
                fix="lower the learning rate or decay it (a scheduler); check for overfitting or a data-order problem",
            )
        ]
    return []
