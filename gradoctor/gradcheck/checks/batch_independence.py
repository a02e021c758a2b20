"""Check 4: output sample i must not depend on input sample j != i.

At batch size B (>= 2, the example's or 3), for each input sample j: perturb its rows of
every batched input along a random direction and watch the other samples' outputs (forward
leak: two forwards per sample); for each output sample i: backward a random cotangent on its
rows only and watch the gradient reaching other samples (backward leak: one backward per
sample). A backward leak without a forward leak is a wrong backward: only the off-diagonal
batch blocks of the Jacobian are wrong. Skipped when the case opts out (``batch_mixing``)
or holds a BatchNorm in train mode.
"""

from __future__ import annotations

import torch

from gradoctor.gradcheck.checks.common import CheckContext, amax, empty, guarded
from gradoctor.gradcheck.checks.contexts import _batched_slots, big_batch, resized_inputs
from gradoctor.gradcheck.jacobian import step_size
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import FlatFunction

NAME = "batch independence"


def _sample_masks(fn: FlatFunction, shapes, batch: int, sizes) -> list[torch.Tensor]:
    """masks[s]: 1 on the flat entries of sample ``s`` (tensors whose dim 0 is the batch)."""
    masks = []
    for s in range(batch):
        parts = []
        for shape, size in zip(shapes, sizes):
            m = torch.zeros(size, dtype=torch.float64)
            if shape is not None:
                per = size // batch
                m[s * per : (s + 1) * per] = 1.0
            parts.append(m)
        masks.append(torch.cat(parts) if parts else torch.zeros(0))
    return masks


def run(ctx: CheckContext) -> list[CheckResult]:
    if ctx.target.batch_size() is None:
        return [CheckResult(NAME, NOTE, "skipped: the case is not batched")]
    if ctx.case.batch_mixing:
        return [CheckResult(NAME, NOTE, "skipped: the case mixes samples (batch_mixing=True)")]
    layer = ctx.target.batch_mixing_layer()
    if layer:
        return [CheckResult(NAME, NOTE, f"skipped: {layer} mixes samples by design")]
    return guarded(NAME, lambda: [_check(ctx)])


def _check(ctx: CheckContext) -> CheckResult:
    batch = big_batch(ctx.target)
    target = ctx.derived(resized_inputs(ctx.target, batch, ctx.seed))
    use = _batched_slots(target)
    fn = FlatFunction(target, use=use)
    if empty(fn):
        return CheckResult(NAME, PASS, "nothing to differentiate")
    in_masks = _sample_masks(fn, [s.shape for s in fn.slots], batch, fn.sizes)
    out_shapes = [s if s and s[0] == batch else None for s in fn.out_shapes]
    out_sizes = [int(torch.tensor(s).prod()) if s else 1 for s in fn.out_shapes]
    if not any(out_shapes):
        return CheckResult(NAME, NOTE, "skipped: no output has the batch dim")
    out_masks = _sample_masks(fn, out_shapes, batch, out_sizes)
    gen = torch.Generator().manual_seed(ctx.seed + 13)
    h = step_size(fn.x0)
    x = fn.x0
    # Forward: does output sample i move when input sample j moves?
    forward_leak = None
    for j in range(batch):
        d = torch.randn(fn.n, generator=gen, dtype=torch.float64) * in_masks[j]
        delta = (fn.value(x + h * d) - fn.value(x - h * d)) / (2 * h)
        own = amax(delta * out_masks[j])
        others = (delta.abs() * (1 - out_masks[j]) * sum(out_masks)).clone()
        noise = 64 * 2.2e-16 * amax(fn.y0) / h
        if float(others.max()) > 1e-6 * own + noise:
            i = int(others.argmax())
            forward_leak = (j, i, float(others.max()))
            break
    # Backward: does a cotangent on output sample i reach input sample j?
    vs = [
        torch.randn(fn.m, generator=gen, dtype=torch.float64) * out_masks[i] for i in range(batch)
    ]
    grads = fn.vjps(x, vs)
    backward_leak = None
    for i, g in enumerate(grads):
        own = amax(g * in_masks[i])
        others = g.abs() * (1 - in_masks[i]) * sum(in_masks)
        if float(others.max()) > 1e-9 * own + 1e-300:
            backward_leak = (i, int(others.argmax()), float(others.max()))
            break
    if forward_leak is None and backward_leak is None:
        return CheckResult(NAME, PASS, f"{batch} samples independent", max_rel_error=0.0)
    if forward_leak is not None:
        j, i, size = forward_leak
        out, out_idx = fn.locate_output(i)
        return CheckResult(
            NAME,
            FAIL,
            f"the forward mixes samples: {out}{list(out_idx)} (sample {out_idx[0]}) moves when "
            f"input sample {j} moves (d out = {size:.3g} per unit); set Case(batch_mixing=True) "
            "if that is intended",
            pattern="forward mixes samples",
        )
    i, j, size = backward_leak
    slot, idx = fn.locate_input(j)
    return CheckResult(
        NAME,
        FAIL,
        f"backward sends the gradient of output sample {i} to {slot} sample {idx[0]}, but the "
        "forward does not mix samples",
        max_rel_error=float("inf"),
        pattern="only off-diagonal batch blocks wrong",
        mismatches=[Mismatch(slot, idx, f"out sample {i}", None, size, 0.0, f"batch size {batch}")],
    )


__all__ = ["run", "FAIL"]
