"""``dead_units``: ReLU-family call sites whose units output zero for every sampled input.

A window is one sampled forward (``diagnostics.activation_every``); a unit is dead in it if no
sample of the batch made it positive. It fires when the fraction of dead units reaches
``thresholds.dead_fraction`` in the last two windows (or the only one)."""

from __future__ import annotations

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    th = ctx.thresholds
    hits = []
    for site, fractions in ctx.history.dead_fraction.items():
        recent = fractions[-2:]
        if recent and min(recent) >= th.dead_fraction:
            hits.append((recent[-1], site))
    if not hits:
        return []
    hits.sort(reverse=True)
    worst, site = hits[0]
    units = ctx.history.relu_units
    steps = ctx.history.activation_steps
    return [
        Diagnosis(
            code="dead_units",
            severity="error" if worst >= 0.9 else "warning",
            message=f"{worst:.0%} of the units after '{site}' never activate ({len(hits)} ReLU site(s) affected)",
            modules=[s.split("#")[0] for _, s in hits],
            steps=steps[-2:],
            evidence={s: {"dead_fraction": f, "units": units.get(s)} for f, s in hits},
            fix="lower the learning rate, check the bias initialization of the layer before it, or use LeakyReLU/GELU",
        )
    ]
