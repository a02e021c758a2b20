"""``exploding_gradients`` and ``vanishing_gradients`` from the per-module norm history.

Depth comparisons use each weight-bearing module's gradient RMS (norm / sqrt(numel)) so
wide and narrow layers compare fairly; input side = first in forward order, output side = last.
A ratio counts only if it holds on ``sustained_fraction`` of the logged steps in the run's
second half (transients at initialization are not a pathology).
"""

from __future__ import annotations

import numpy as np

from gradoctor.diagnose.context import RunContext, spearman, window
from gradoctor.diagnose.types import Diagnosis


def _rms(ctx: RunContext, order: list[str]) -> np.ndarray:
    names = ctx.history.modules
    norms = ctx.module_norms()
    cols = [names.index(n) for n in order]
    numel = np.asarray([max(ctx.modules[n].numel, 1) for n in order], dtype=np.float64)
    keep = ~ctx.module_skipped()
    return norms[keep][:, cols] / np.sqrt(numel)


def _absurd_from_the_start(
    ctx: RunContext, steps: np.ndarray, totals: np.ndarray
) -> list[Diagnosis]:
    """The total gradient norm over the first log interval against the total parameter norm
    measured at its end: a ratio of ``explode_grad_to_param`` or more means an update of lr·g
    would dwarf the weights at any usual learning rate."""
    h = ctx.history
    if not h.param_norm_total or not h.update_ratio_steps or not len(steps):
        return []
    first_step, weights = h.update_ratio_steps[0], h.param_norm_total[0]
    early = totals[(steps <= first_step) & np.isfinite(totals)]
    if weights <= 0 or not len(early):
        return []
    grad = float(np.median(early))
    ratio = grad / weights
    if ratio < ctx.thresholds.explode_grad_to_param:
        return []
    return [
        Diagnosis(
            code="exploding_gradients",
            severity="warning",
            message=f"the total gradient norm is {ratio:.3g}x the parameter norm from the start "
            f"({grad:.3g} vs {weights:.3g} over steps 1-{first_step})",
            modules=_largest(ctx),
            steps=[int(steps[0]), int(first_step)],
            evidence={"grad_norm": grad, "param_norm": weights, "ratio": ratio},
            fix="check the initialisation scale (Kaiming/Xavier for the activation in use) and the "
            "loss's scale (a sum instead of a mean, unnormalised targets); set "
            "train.clip_grad_norm (e.g. 1.0)",
        )
    ]


def _second_half(x: np.ndarray) -> np.ndarray:
    return x[len(x) // 2 :]


def check(ctx: RunContext) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    th = ctx.thresholds
    steps = ctx.steps()[~ctx.skipped_mask()]
    totals = ctx.grad_norm_totals()[~ctx.skipped_mask()]
    finite = np.isfinite(totals)
    # 1. growth over time
    if finite.sum() >= 8:
        t = totals[finite]
        w = window(t)
        early, late = float(np.median(t[:w])), float(np.median(t[-w:]))
        trend = spearman(t)
        if early > 0 and late / early > th.explode_growth and trend > 0.5:
            out.append(
                Diagnosis(
                    code="exploding_gradients",
                    severity="error" if late / early > th.explode_growth**2 else "warning",
                    message=f"the total gradient norm grew {late / early:.3g}x over the run (median {early:.3g} -> {late:.3g})",
                    modules=_largest(ctx),
                    steps=[int(steps[finite][0]), int(steps[finite][-1])],
                    evidence={
                        "early_median": early,
                        "late_median": late,
                        "growth": late / early,
                        "trend": trend,
                    },
                    fix="lower the learning rate, set train.clip_grad_norm (e.g. 1.0), or add normalization to the named modules",
                )
            )
    # 2. absurdly large against the weights from the start (growth needs time to show)
    out += _absurd_from_the_start(ctx, steps, totals)
    order = ctx.depth_order()
    if len(order) < 2:
        return out
    rms = _second_half(_rms(ctx, order))
    if len(rms) < 2:
        return out
    steps = ctx.module_steps()[~ctx.module_skipped()]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_in_out = rms[:, 0] / rms[:, -1]
    # 3. growing toward the input
    held = np.mean(np.isfinite(ratio_in_out) & (ratio_in_out > th.explode_depth_ratio))
    if held >= th.sustained_fraction:
        med = float(np.median(ratio_in_out[np.isfinite(ratio_in_out)]))
        out.append(
            Diagnosis(
                code="exploding_gradients",
                severity="warning",
                message=f"gradients grow {med:.3g}x from the output layer '{order[-1]}' to the input layer '{order[0]}'",
                modules=[order[0], *order[1:3]],
                steps=[int(s) for s in _second_half(steps)[[0, -1]]],
                evidence={
                    "input_side_rms": float(np.nanmedian(rms[:, 0])),
                    "output_side_rms": float(np.nanmedian(rms[:, -1])),
                    "ratio_median": med,
                    "held_fraction": float(held),
                },
                fix="check initialization (use Kaiming/Xavier scaled for depth), add normalization or residual scaling, or clip gradients",
            )
        )
    # 3. vanishing toward the input: only on steps where the output layer still learns
    alive = rms[:, -1] > th.vanish_floor * 1e3
    if alive.sum() < 2:
        return out
    live = rms[alive]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = live / live[:, -1:]
    held_each = np.mean((rel < th.vanish_depth_ratio) | (live < th.vanish_floor), axis=0)
    med_rel = (
        np.nanmedian(np.where(np.isfinite(rel), rel, np.nan), axis=0)
        if np.isfinite(rel).any()
        else np.zeros(rel.shape[1])
    )
    vanished = [
        order[j]
        for j in np.argsort(med_rel)
        if held_each[j] >= th.sustained_fraction and j < len(order) - 1
    ]
    if vanished:
        first = vanished[0]
        j = order.index(first)
        out.append(
            Diagnosis(
                code="vanishing_gradients",
                severity="warning",
                message=f"'{first}' gets "
                + (
                    f"gradients {med_rel[j]:.2g}x those of"
                    if med_rel[j] > 0
                    else "no gradient, unlike"
                )
                + f" the output layer '{order[-1]}'",
                modules=vanished[:5],
                steps=[int(s) for s in _second_half(steps)[[0, -1]]],
                evidence={
                    "relative_rms": {order[k]: float(med_rel[k]) for k in range(len(order))},
                    "held_fraction": float(held_each[j]),
                    "threshold": th.vanish_depth_ratio,
                },
                fix="replace saturating activations (sigmoid/tanh) with ReLU/GELU, add residual connections or normalization, "
                "or use an initialization scaled for depth",
            )
        )
    return out


def _largest(ctx: RunContext) -> list[str]:
    norms = ctx.module_norms()
    if not len(norms):
        return []
    last = np.nan_to_num(norms[-1], nan=np.inf)
    names = ctx.history.modules
    return [names[j] for j in np.argsort(-last)[:3]]
