"""Check 4: output sample i must not depend on input sample j != i.

At batch size B (>= 2, the example's or 3), for each probed input sample j: perturb its
rows of every batched input along a random direction and watch the other samples' outputs
(forward leak: two forwards per sample); for each probed output sample i: backward a random
cotangent on its rows only and watch the gradient reaching other samples (backward leak: one
backward per sample). Every sample is probed up to ``MAX_PROBED``; beyond, the first, the last
and random others (the result says so). Cost: 2 forwards + 1 backward per probed sample;
memory O(n) (one sample mask at a time). A backward leak without a forward leak is a wrong backward: only the off-diagonal
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


MAX_PROBED = 8  # samples perturbed / back-propagated from, at most (first, last, random)


class _Layout:
    """Where each sample's entries lie in a flat vector of tensors (those whose dim 0 is the
    batch): masks are built one sample at a time, so memory stays O(n), never O(B * n)."""

    def __init__(self, shapes, sizes, batch: int):
        self.batch, self.n = batch, int(sum(sizes))
        self.spans: list[tuple[int, int]] = []  # (offset, entries per sample) per batched tensor
        offset = 0
        for shape, size in zip(shapes, sizes):
            if shape is not None:
                self.spans.append((offset, size // batch))
            offset += size

    def mask(self, s: int) -> torch.Tensor:
        """1 on the flat entries of sample ``s``."""
        m = torch.zeros(self.n, dtype=torch.float64)
        for offset, per in self.spans:
            m[offset + s * per : offset + (s + 1) * per] = 1.0
        return m

    def batched(self) -> torch.Tensor:
        """1 on every entry that belongs to some sample."""
        m = torch.zeros(self.n, dtype=torch.float64)
        for offset, per in self.spans:
            m[offset : offset + self.batch * per] = 1.0
        return m


def probed_samples(batch: int, gen: torch.Generator) -> list[int]:
    """Every sample up to ``MAX_PROBED``; beyond, the first, the last and random others."""
    if batch <= MAX_PROBED:
        return list(range(batch))
    middle = (torch.randperm(batch - 2, generator=gen)[: MAX_PROBED - 2] + 1).tolist()
    return [0, *sorted(middle), batch - 1]


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
    ins = _Layout([s.shape for s in fn.slots], fn.sizes, batch)
    out_shapes = [s if s and s[0] == batch else None for s in fn.out_shapes]
    out_sizes = [int(torch.tensor(s).prod()) if s else 1 for s in fn.out_shapes]
    if not any(out_shapes):
        return CheckResult(NAME, NOTE, "skipped: no output has the batch dim")
    outs = _Layout(out_shapes, out_sizes, batch)
    gen = torch.Generator().manual_seed(ctx.seed + 13)
    probed = probed_samples(batch, gen)
    h = step_size(fn.x0)
    x = fn.x0
    out_batched, in_batched = outs.batched(), ins.batched()
    # Forward: does output sample i move when input sample j moves?
    forward_leak = None
    noise = 64 * 2.2e-16 * amax(fn.y0) / h
    for j in probed:
        out_j = outs.mask(j)
        d = torch.randn(fn.n, generator=gen, dtype=torch.float64) * ins.mask(j)
        delta = (fn.value(x + h * d) - fn.value(x - h * d)) / (2 * h)
        own = amax(delta * out_j)
        others = delta.abs() * (1 - out_j) * out_batched
        if float(others.max()) > 1e-6 * own + noise:
            forward_leak = (j, int(others.argmax()), float(others.max()))
            break
    # Backward: does a cotangent on output sample i reach input sample j?
    vs = [torch.randn(fn.m, generator=gen, dtype=torch.float64) * outs.mask(i) for i in probed]
    grads = fn.vjps(x, vs)
    backward_leak = None
    for i, g in zip(probed, grads):
        in_i = ins.mask(i)
        own = amax(g * in_i)
        others = g.abs() * (1 - in_i) * in_batched
        if float(others.max()) > 1e-9 * own + 1e-300:
            backward_leak = (i, int(others.argmax()), float(others.max()))
            break
    sampled = "" if len(probed) == batch else f" (probed {len(probed)} of {batch} samples)"
    if forward_leak is None and backward_leak is None:
        return CheckResult(NAME, PASS, f"{batch} samples independent{sampled}", max_rel_error=0.0)
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
