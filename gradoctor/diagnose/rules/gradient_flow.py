"""``exploding_gradients`` and ``vanishing_gradients`` from the per-module norm history.

Depth comparisons use each weight-bearing module's gradient RMS (norm / sqrt(numel)) so
wide and narrow layers compare fairly; input side = first in forward order, output side = last.
A ratio counts only if it holds on ``sustained_fraction`` of the logged steps in the run's
second half (transients at initialization are not a pathology).

Vanishing is judged along the depth of each stack of same-kind modules
(``RunContext.depth_stacks``: ``layers.0`` against ``layers.11``, layer 0's attention query
against layer 5's), never a module against the output layer: some modules get small
gradients for structural reasons that hold at every depth (attention query/key projections
while attention is near uniform, embeddings, normalisation gains), and a same-kind
comparison cancels them, while signal lost with depth shows as the input-side member
starved against the output-side one. A module that gets no gradient at all (RMS below
``vanish_floor`` while the output layer learns) is reported with or without a stack.
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
    # 4. vanishing toward the input, within each stack of same-kind modules
    out += _vanishing(ctx, order, rms, _second_half(steps))
    return out


def _stack_reference(ctx: RunContext, order: list[str]) -> np.ndarray:
    """``int [n_modules]``: per column of ``order``, the column of the output-side member of its
    stack (itself for that member), or -1 for a module with no depth peer."""
    ref = np.full(len(order), -1)
    for stack in ctx.depth_stacks():
        for name in stack:
            ref[order.index(name)] = order.index(stack[-1])
    return ref


def _vanishing(
    ctx: RunContext, order: list[str], rms: np.ndarray, steps: np.ndarray
) -> list[Diagnosis]:
    """Stack members far below their stack's output-side member, or any module below the floor.

    Args:
        ctx (RunContext): the run.
        order (list[str]): weight-bearing modules, input side first (``depth_order()``).
        rms (np.ndarray): ``float64 [n_rows, n_modules]`` gradient RMS of the second half.
        steps (np.ndarray): ``int64 [n_rows]`` the step of each row.
    """
    th = ctx.thresholds
    alive = rms[:, -1] > th.vanish_floor * 1e3  # only on steps where the output layer learns
    if alive.sum() < 2:
        return []
    live = rms[alive]
    ref = _stack_reference(ctx, order)
    in_stack = ref >= 0
    against = np.where(in_stack, ref, len(order) - 1)  # a peerless module: the output layer
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = live / live[:, against]
    starved = ((rel < th.vanish_depth_ratio) & in_stack) | (live < th.vanish_floor)
    held_each = np.mean(starved, axis=0)
    finite = np.where(np.isfinite(rel), rel, np.nan)
    med_rel = np.zeros(len(order))
    has = np.isfinite(finite).any(axis=0)
    med_rel[has] = np.nanmedian(finite[:, has], axis=0)
    vanished = [
        order[j]
        for j in np.argsort(med_rel, kind="stable")
        if held_each[j] >= th.sustained_fraction and j != len(order) - 1
    ]
    if not vanished:
        return []
    j = order.index(vanished[0])
    return [
        Diagnosis(
            code="vanishing_gradients",
            severity="warning",
            message=_vanishing_message(ctx, order, j, int(against[j]), float(med_rel[j])),
            modules=vanished[:5],
            steps=[int(s) for s in steps[[0, -1]]],
            evidence={
                "relative_rms": {
                    order[k]: float(med_rel[k]) for k in range(len(order)) if in_stack[k]
                },
                "compared_with": order[against[j]],
                "held_fraction": float(held_each[j]),
                "threshold": th.vanish_depth_ratio,
            },
            fix="replace saturating activations (sigmoid/tanh) with ReLU/GELU, add residual connections or normalization, "
            "or use an initialization scaled for depth",
        )
    ]


def _vanishing_message(ctx: RunContext, order: list[str], j: int, k: int, rel: float) -> str:
    stack = next((s for s in ctx.depth_stacks() if order[j] in s), None)
    if stack is None or k == j:  # no peer, or the stack's output-side member under the floor
        other = f"the output layer '{order[-1]}'"
    else:
        gap = stack.index(order[k]) - stack.index(order[j])
        other = f"'{order[k]}', the same kind of module {gap} place(s) nearer the output"
    if rel > 0:
        return f"'{order[j]}' gets gradients {rel:.2g}x those of {other}"
    return f"'{order[j]}' gets no gradient, unlike {other}"


def _largest(ctx: RunContext) -> list[str]:
    norms = ctx.module_norms()
    if not len(norms):
        return []
    last = np.nan_to_num(norms[-1], nan=np.inf)
    names = ctx.history.modules
    return [names[j] for j in np.argsort(-last)[:3]]
