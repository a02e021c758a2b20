"""``exploding_activations``: the forward activation scale grows geometrically with depth.

A network initialised too large multiplies the scale of its activations at every layer (a
ReLU stack with weights 2.5x Kaiming: x2.5 per layer, 1e4 after a dozen); the weight
gradients can stay flat across depth (the growing backward signal meets shrinking inputs), so
the gradient rules do not see it, but the loss, the fp16 range and the optimisation do.

Reads the RMS of each leaf module's output on the first sampled step (``history.act_rms``,
``monitors/activations.py``), for the modules that own parameters, in forward order. It
looks for the stretch of consecutive layers with the largest total growth whose median
per-layer ratio is at least ``activation_growth`` (robust to a layer that shrinks the scale
inside a growing stretch, e.g. a branch's second layer) and at least 4 layers long, and
fires when that stretch grows the scale ``activation_growth_total`` times or more and ends
at an RMS of at least ``END_RMS`` (growth from tiny to normal scales is not an explosion).
It names where the stretch starts, the geometric per-layer growth and the total.
Normalisation layers reset the scale: no stretch crosses one.
"""

from __future__ import annotations

import math

import numpy as np

from gradoctor.diagnose.context import NORM_TYPES, RunContext
from gradoctor.diagnose.types import Diagnosis

MIN_LAYERS = 4
END_RMS = 10.0  # growth that ends at an RMS below this (e.g. 0.005 -> 1) is not an explosion
MAX_LAYERS = 400  # the search is quadratic in the number of layers


def _segments(ctx: RunContext) -> list[tuple[list[str], np.ndarray]]:
    """The parametrised leaves in forward order with their first-window output RMS, split at
    normalisation layers (which reset the scale: no stretch crosses one)."""
    rms = ctx.history.act_rms
    out: list[tuple[list[str], list[float]]] = [([], [])]
    for n in ctx.history.forward_order[:MAX_LAYERS]:
        info = ctx.modules.get(n)
        if info is None or info.numel == 0 or not rms.get(n):
            continue
        if info.type in NORM_TYPES:
            out.append(([], []))
            continue
        value = float(rms[n][0])
        if math.isfinite(value) and value > 0:
            out[-1][0].append(n)
            out[-1][1].append(value)
    return [(names, np.asarray(values)) for names, values in out if len(names) >= MIN_LAYERS]


def strongest_growth(values: np.ndarray, per_layer: float) -> tuple[int, int, float] | None:
    """``(start, end, total growth)`` of the stretch ``values[start..end]`` with the largest
    ``values[end] / values[start]`` among those at least ``MIN_LAYERS`` long whose median
    consecutive ratio is ≥ ``per_layer``, trimmed of the layers at either end that grow less
    than that (so it starts where the growth starts); None when there is none."""
    logs = np.log(values)
    steps = np.diff(logs)
    best = None
    for i in range(len(values)):
        for j in range(i + MIN_LAYERS - 1, len(values)):
            if np.median(steps[i:j]) < math.log(per_layer):
                continue
            total = logs[j] - logs[i]
            if best is None or total > best[2]:
                best = (i, j, total)
    if best is None:
        return None
    i, j, _ = best
    while i < j and steps[i] < math.log(per_layer):  # start where the growth starts
        i += 1
    while j > i and steps[j - 1] < math.log(per_layer):
        j -= 1
    return i, j, math.exp(logs[j] - logs[i])


def check(ctx: RunContext) -> list[Diagnosis]:
    t = ctx.thresholds
    best = None
    for names, values in _segments(ctx):
        found = strongest_growth(values, t.activation_growth)
        if found is None or found[2] < t.activation_growth_total or values[found[1]] < END_RMS:
            continue
        if best is None or found[2] > best[2][2]:
            best = (names, values, found)
    if best is None:
        return []
    names, values, (i, j, total) = best
    factor = total ** (1 / (j - i))
    step = ctx.history.activation_steps[0] if ctx.history.activation_steps else 1
    return [
        Diagnosis(
            code="exploding_activations",
            severity="warning",
            message=f"the activations grow {factor:.3g}x per layer from '{names[i]}' to "
            f"'{names[j]}' ({j - i} layers, {total:.3g}x in all: output RMS "
            f"{values[i]:.3g} -> {values[j]:.3g}) on the first sampled step",
            modules=[names[i], names[j]],
            steps=[step],
            evidence={
                "per_layer_growth": factor,
                "total_growth": total,
                "layers": j - i,
                "rms": {n: float(v) for n, v in zip(names[i : j + 1], values[i : j + 1])},
            },
            fix=f"initialise from '{names[i]}' on with the scale of the activation in use "
            "(Kaiming for ReLU: std sqrt(2/fan_in); Xavier for tanh), add normalisation "
            "(LayerNorm/BatchNorm), or scale residual branches down (e.g. zero-init the "
            "branch's last layer, or 1/sqrt(depth))",
        )
    ]
