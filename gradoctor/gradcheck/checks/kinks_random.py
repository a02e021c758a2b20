"""Check 7: kinks and randomness.

Kinks found by any comparison (points where the one-sided differences disagree: ReLU at 0,
ties in max) are listed as notes; the comparisons themselves already re-checked just off them.
Random cases (outputs change with the RNG seed) are detected before any check and evaluated
with the RNG forked and replayed per evaluation. Here the backward is run twice on one
forward with the RNG reseeded differently each time: different gradients mean the backward
draws new random numbers instead of reusing the forward's (one forward, three backwards; a backward that differs even under the same RNG state is
left to the repeated-backward check).
"""

from __future__ import annotations

import torch

from gradoctor.gradcheck.checks.common import CheckContext, amax, empty, guarded
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import Target, manual_seed

NAME = "kinks & randomness"


def is_random(target: Target, seed: int) -> bool:
    """True when two forwards under different seeds differ (two forwards)."""
    outs = []
    for s in (seed, seed + 1):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            manual_seed(s)
            outs.append([o.detach().clone() for o in target.call(target.values)])
    return any(not torch.equal(a, b) for a, b in zip(*outs))


def run(ctx: CheckContext) -> list[CheckResult]:
    return guarded(NAME, lambda: [_check(ctx)])


def _check(ctx: CheckContext) -> CheckResult:
    target = ctx.target
    fn = ctx.flat()
    if empty(fn):
        return CheckResult(NAME, PASS, "nothing to differentiate")
    gen = torch.Generator().manual_seed(ctx.seed + 17)
    v = torch.randn(fn.m, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        manual_seed(ctx.seed)
        vals = fn.values_at(fn.x0, requires_grad=True)
        outs = fn._kept(target.call(vals))
        grads = []
        seeds = (ctx.seed + 101, ctx.seed + 202, ctx.seed + 101)
        for k, s in enumerate(seeds):
            manual_seed(s)
            grads.append(fn.flatten(fn._grads(outs, vals, v, retain=k < len(seeds) - 1)))
    err = (grads[0] - grads[1]).abs()
    if not torch.equal(grads[0], grads[2]):
        err = torch.zeros_like(err)  # differs even under the same RNG state: not randomness
    notes = []
    if target.random:
        notes.append("random: evaluated with the RNG forked and replayed per evaluation")
    unique = list(dict.fromkeys(ctx.kinks))
    if unique:
        shown = ", ".join(unique[:8]) + (" ..." if len(unique) > 8 else "")
        notes.append(f"{len(unique)} non-differentiable point(s), checked just off them: {shown}")
    if bool(err.max() > 0) if err.numel() else False:
        j = int(err.argmax())
        slot, idx = fn.locate_input(j)
        return CheckResult(
            NAME,
            FAIL,
            "backward regenerates randomness: the same forward gives different gradients "
            "under different RNG states (save the mask/noise in forward and reuse it)",
            max_rel_error=float(err.max()) / (amax(grads[0]) or 1.0),
            pattern="backward regenerates randomness",
            mismatches=[
                Mismatch(slot, idx, "v . out", None, float(grads[1][j]), float(grads[0][j]))
            ],
            notes=notes,
        )
    return CheckResult(
        NAME, NOTE if notes else PASS, " · ".join(notes) or "smooth, deterministic", notes=notes
    )


__all__ = ["run", "is_random", "FAIL"]
