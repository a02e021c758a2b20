"""``bad_initial_loss``: the first step's loss far above the loss function's value at chance.

At initialisation a classifier should be near chance (ln C for cross-entropy over C classes,
ln 2 for binary cross-entropy) and a regressor near the targets' variance (MSE of predicting
their mean); a loss ``initial_loss_factor`` times that or more means the outputs start far
too large — usually the output layer's (or the whole net's) init scale. Reads
``history.initial_loss`` (``monitors/initial_loss.py``: both values on the same micro-batch).
"""

from __future__ import annotations

import math

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    first = ctx.history.initial_loss
    if not first:
        return []
    loss, chance = first["loss"], first["chance"]
    if not (math.isfinite(loss) and math.isfinite(chance)) or chance <= 0:
        return []
    factor = ctx.thresholds.initial_loss_factor
    if loss < factor * chance:
        return []
    classification = first["rule"] in ("uniform logits", "uniform log-probabilities")
    fix = (
        "shrink the output layer's initial weights (e.g. a zero-initialised head, or std "
        "1e-2 / sqrt(fan_in)), set its bias to the log class prior, and check the init scale of "
        "the layers before it (Kaiming/Xavier for the activation in use)"
        if classification
        else "shrink the output layer's initial weights (a zero-initialised head predicts 0), "
        "set its bias to the targets' mean, or standardise the targets"
    )
    return [
        Diagnosis(
            code="bad_initial_loss",
            severity="warning",
            message=f"the loss at step 1 is {loss:.4g}, {loss / chance:.3g}x the {first['loss_fn']} "
            f"at chance ({chance:.4g}, {first['rule']}): the model starts far from chance",
            steps=[1],
            evidence={
                "loss": loss,
                "chance": chance,
                "ratio": loss / chance,
                "chance_rule": first["rule"],
                "loss_fn": first["loss_fn"],
            },
            fix=fix,
        )
    ]
