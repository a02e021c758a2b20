"""``fp16_headroom``: activations or gradients within ``headroom_factor`` of fp16's max (65504).

Activations: max |output| per leaf module on sampled steps. Gradients: max |grad| per module,
unscaled — the scaler already keeps *scaled* gradients at the edge on purpose, so only
unscaled values near the limit mean the scale is about to be pinned below 1. In fp16 runs this
is a warning; in fp32/bf16 runs, an info note that fp16 would overflow."""

from __future__ import annotations

from gradoctor.diagnose.context import FP16_MAX, RunContext
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    limit = FP16_MAX / ctx.thresholds.headroom_factor
    acts = {m: max(v) for m, v in ctx.history.act_absmax.items() if v and max(v) == max(v)}
    near = {m: v for m, v in acts.items() if v > limit}
    names = ctx.history.modules
    grads: dict[str, float] = {}
    for row in ctx.history.grad_absmax:
        for name, value in zip(names, row):
            grads[name] = max(grads.get(name, 0.0), value)
    near_grads = {m: v for m, v in grads.items() if v > limit}
    if not near and not near_grads:
        return []
    ranked = sorted(near.items(), key=lambda kv: -kv[1]) + sorted(
        near_grads.items(), key=lambda kv: -kv[1]
    )
    top, value = ranked[0]
    what = "activations" if near else "gradients"
    fp16 = ctx.precision == "fp16"
    return [
        Diagnosis(
            code="fp16_headroom",
            severity="warning" if fp16 else "info",
            message=f"{what} of '{top}' reach {value:.3g}, "
            + (
                f"within {FP16_MAX / value:.2g}x of fp16's max (65504)"
                if value <= FP16_MAX
                else f"{value / FP16_MAX:.2g}x beyond fp16's max (65504)"
            )
            + ("" if fp16 else " (this run is not fp16: it would overflow there)"),
            modules=[m for m, _ in ranked][:5],
            steps=ctx.history.activation_steps[-2:],
            evidence={
                "fp16_max": FP16_MAX,
                "activations_absmax": near,
                "gradients_absmax_unscaled": near_grads,
            },
            fix="use bf16, or normalize/scale down the named modules' outputs (e.g. LayerNorm, smaller init)"
            if fp16
            else "stay on bf16/fp32 for this model, or normalize the named modules before trying fp16",
        )
    ]
