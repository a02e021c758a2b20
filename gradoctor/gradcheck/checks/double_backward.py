"""Check 2: second order (double backward), unless the backward is ``once_differentiable``.

The first-order map ``(x, v) -> J(x)^T v`` is differentiated like any function: with
``phi(x, v) = w . J(x)^T v`` for a fixed random ``w``, backward through backward (two
passes with ``create_graph``) is compared with central differences of ``phi`` (each one
forward and one backward), by probes and bisection. A ``.detach()`` inside backward shows up
here as a missing (zero) second-order gradient.
"""

from __future__ import annotations

import torch

from gradoctor.gradcheck.autograd_graph import once_differentiable_classes
from gradoctor.gradcheck.checks.common import CheckContext, from_comparison, guarded
from gradoctor.gradcheck.result import NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import FlatFunction, Slot

NAME = "double backward"


class SecondOrder:
    """``z = [x, v] -> phi(z) = w . J(x)^T v`` as a FlatFunction-like object (M = 1)."""

    def __init__(self, first: FlatFunction, seed: int):
        self.first = first
        gen = torch.Generator().manual_seed(seed + 7)
        self.w = torch.randn(first.n, generator=gen, dtype=torch.float64)
        v0 = torch.randn(first.m, generator=gen, dtype=torch.float64)
        self.x0 = torch.cat([first.x0, v0])
        self.slots = first.slots + [Slot("grad_output", "input", -1, (first.m,))]
        self.sizes = first.sizes + [first.m]
        self.n, self.m = first.n + first.m, 1
        self.detached = False

    def value(self, z: torch.Tensor) -> torch.Tensor:
        x, v = z[: self.first.n], z[self.first.n :]
        return (self.w @ self.first.vjp(x, v)).reshape(1)

    def vjp(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.vjps(z, [s])[0]

    def vjps(self, z: torch.Tensor, ss) -> list[torch.Tensor]:
        first, target = self.first, self.first.target
        results = []
        with torch.enable_grad(), target.rng():
            vals = first.values_at(z[: first.n], requires_grad=True)
            leaves = [vals[i] for i in first.use]
            v = z[first.n :].clone().to(target.dtype).requires_grad_(True)
            outs = first._kept(target.call(vals, first.prepare))
            grads = first._grads(outs, leaves, v, retain=True, create_graph=True)
            phi = sum((g.reshape(-1) * w).sum() for g, w in zip(grads, _split(self.w, first)))
            for k, s in enumerate(ss):
                if not isinstance(phi, torch.Tensor) or not phi.requires_grad:
                    self.detached = True
                    results.append(torch.zeros(self.n, dtype=torch.float64))
                    continue
                second = torch.autograd.grad(
                    phi * s[0], leaves + [v], retain_graph=k < len(ss) - 1, allow_unused=True
                )
                results.append(
                    torch.cat(
                        [
                            (torch.zeros_like(t) if g is None else g).reshape(-1).double()
                            for g, t in zip(second, leaves + [v])
                        ]
                    )
                )
        return results

    def locate_input(self, j: int):
        if j >= self.first.n:
            return "grad_output", self.first.locate_output(j - self.first.n)[1]
        return self.first.locate_input(j)

    def locate_output(self, i: int):
        return "w . grad", ()


def _split(w: torch.Tensor, first: FlatFunction) -> list[torch.Tensor]:
    return list(torch.split(w, first.sizes))


def run(ctx: CheckContext) -> list[CheckResult]:
    if ctx.case.double_backward is False:
        return [CheckResult(NAME, NOTE, "skipped: the case opts out (double_backward=False)")]

    def body() -> list[CheckResult]:
        marked = once_differentiable_classes(ctx.target, ctx.function_classes())
        if marked:
            return [
                CheckResult(
                    NAME, NOTE, f"skipped: backward of {', '.join(marked)} is once_differentiable"
                )
            ]
        so = SecondOrder(ctx.flat(), ctx.seed)
        try:
            comp = ctx.compare(so, context="double backward")  # type: ignore[arg-type]
        except (RuntimeError, NotImplementedError) as exc:
            if "once_differentiable" in str(exc):
                return [CheckResult(NAME, NOTE, "skipped: backward is once_differentiable")]
            if "is not implemented" in str(exc):  # an op in backward has no double backward
                return [CheckResult(NAME, NOTE, f"not supported: {str(exc).splitlines()[0]}")]
            raise
        result = from_comparison(
            NAME,
            comp,
            so,  # type: ignore[arg-type]
            ctx,
            context_pattern="only in double backward" if ctx.first_order_ok else None,
        )
        if result.status != PASS and so.detached:
            result.message = (
                "backward returns a gradient with no graph (a .detach() or no_grad inside "
                "backward?): make it differentiable or mark it @once_differentiable; "
                + result.message
            )
        result.mismatches = [
            Mismatch(m.input, m.input_index, "d2", None, m.analytic, m.numeric, m.context)
            for m in result.mismatches
        ]
        return [result]

    return guarded(NAME, body)
