"""``edge_of_stability``: the measured sharpness reached the optimizer's stability threshold.

Reads ``history.sharpness`` (the sharpness instrument, ``diagnostics.sharpness_every``). A
quadratic is stable under gradient descent only while λmax < 2/lr (the optimizer's
threshold, ``hessian/stability.py``); full-batch training drives λmax up to that threshold
and then hovers there while the loss still falls, non-monotonically (Cohen et al. 2021,
"Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability"). So:

- info: the sharpness reached the threshold and the loss kept falling since;
- warning: it stayed at or above the threshold (the last two measurements) while the loss
  rose or spiked (a loss after the crossing above twice the loss at it).

The fix names the largest stable learning rate at the last measurement, lr·threshold/λ
(2/λ for SGD).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis

SPIKE = 2.0  # a loss after the crossing above SPIKE x the loss at the crossing is a spike


def _measured(ctx: RunContext) -> list[dict[str, Any]]:
    out = []
    for r in ctx.history.sharpness:
        lam, thr = r.get("sharpness"), r.get("threshold")
        if lam is not None and thr is not None and math.isfinite(lam) and thr > 0:
            out.append(r)
    return out


def _loss_near(steps: np.ndarray, losses: np.ndarray, step: int) -> float:
    """The loss at the last logged step at or before ``step`` (NaN when none)."""
    at = np.searchsorted(steps, step, side="right") - 1
    return float(losses[at]) if at >= 0 else math.nan


def check(ctx: RunContext) -> list[Diagnosis]:
    records = _measured(ctx)
    above = [r for r in records if r["sharpness"] >= r["threshold"]]
    if not above:
        return []
    first, last = above[0], records[-1]
    steps, losses = ctx.steps(), ctx.losses()
    ok = np.isfinite(losses)
    steps, losses = steps[ok], losses[ok]
    at_cross = _loss_near(steps, losses, first["step"])
    after = losses[steps >= first["step"]]
    end = float(np.median(after[-max(1, len(after) // 10) :])) if len(after) else math.nan
    peak = float(after.max()) if len(after) else math.nan
    which = "λmax(P⁻¹H)" if first.get("preconditioned") else "λmax(H)"
    stable_lr = (
        last["lr"] * last["threshold"] / last["sharpness"] if last["sharpness"] > 0 else None
    )
    evidence = {
        "first_step": first["step"],
        "sharpness": first["sharpness"],
        "threshold": first["threshold"],
        "ratio": first["sharpness"] / first["threshold"],
        "batch_sharpness": first.get("batch_sharpness"),
        "lr": first["lr"],
        "last_ratio": last["sharpness"] / last["threshold"],
        "measurements_above": len(above),
        "measurements": len(records),
        "loss_at_crossing": at_cross,
        "loss_last": end,
        "max_stable_lr": stable_lr,
    }
    still_above = len(records) >= 2 and all(r["sharpness"] >= r["threshold"] for r in records[-2:])
    rising = math.isfinite(end) and math.isfinite(at_cross) and end > at_cross
    spiking = math.isfinite(peak) and math.isfinite(at_cross) and peak > SPIKE * at_cross
    lr_fix = (
        f"the largest stable learning rate at step {last['step']} is about {stable_lr:.3g} "
        f"(lr · threshold / sharpness; 2/λ for SGD)"
        if stable_lr
        else "lower the learning rate"
    )
    crossed = (
        f"the sharpness {which} reached the stability threshold at step {first['step']}: "
        f"{first['sharpness']:.4g} vs {first['threshold']:.4g} ({first['sharpness'] / first['threshold']:.2f}x) at lr {first['lr']:.3g}"
    )
    if still_above and (rising or spiking):
        return [
            Diagnosis(
                code="edge_of_stability",
                severity="warning",
                message=crossed
                + ", and stayed above it while the loss "
                + ("rose" if rising else "spiked")
                + f" ({at_cross:.4g} -> {end:.4g}, max {peak:.4g})",
                steps=[first["step"], last["step"]],
                evidence=evidence,
                fix=f"{lr_fix}: lower the learning rate below it, or decay it (a scheduler) / add warmup",
            )
        ]
    return [
        Diagnosis(
            code="edge_of_stability",
            severity="info",
            message=crossed
            + f"; the loss kept falling ({at_cross:.4g} -> {end:.4g}): training at the edge of stability",
            steps=[first["step"], last["step"]],
            evidence=evidence,
            fix=f"usually nothing (the loss falls non-monotonically there); for a smoother descent, {lr_fix}",
        )
    ]
