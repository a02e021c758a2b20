"""Check 3: the calling contexts that hide bugs.

- batch size 1 and batch size > 1 (dim 0 of the batched inputs resized),
- every subset of the differentiable tensors requiring grad (``needs_input_grad`` bugs),
- non-contiguous inputs and non-contiguous ``grad_output``,
- inputs modified in place after forward (autograd must raise, or gradients stay right),
- repeated backward (same graph twice, and a fresh forward) gives identical gradients.

Each context costs ``n_probes`` probes (two forwards and one backward each) plus bisection
when one fails.
"""

from __future__ import annotations

import itertools

import torch

from gradoctor.gradcheck.checks.common import (
    CheckContext,
    amax,
    empty,
    from_comparison,
    guarded,
    noncontiguous,
)
from gradoctor.gradcheck.jacobian import rademacher
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import FlatFunction, Target, slot_label

MAX_SUBSETS = 14


def resized_inputs(target: Target, new_batch: int, seed: int) -> tuple:
    """The case's own inputs with dim 0 of the batched ones cut or grown to ``new_batch``.

    Grown rows repeat the example's rows plus noise at the input's own scale, so no two
    samples tie.
    """
    gen = torch.Generator().manual_seed(seed + 11)
    b = target.batch_size()
    inputs = list(target.case.inputs)
    for pos in target.batched_positions():
        a = inputs[pos]
        rows = torch.arange(new_batch) % b
        grown = a.detach()[rows].clone()
        if a.is_floating_point() and new_batch > b:
            spread = float(a.detach().double().std()) if a.numel() > 1 else 1.0
            spread = spread if spread > 0 else 1.0
            noise = torch.randn(grown[b:].shape, generator=gen, dtype=torch.float64)
            grown[b:] += (0.5 * spread * noise).to(grown.dtype)
        inputs[pos] = grown
    return tuple(inputs)


def big_batch(target: Target) -> int:
    b = target.batch_size() or 1
    return b if b > 1 else 3


def run(ctx: CheckContext) -> list[CheckResult]:
    results: list[CheckResult] = []
    results += _batch_sizes(ctx)
    results += guarded("requires_grad subsets", lambda: [_subsets(ctx)])
    results += guarded("non-contiguous inputs", lambda: [_noncontiguous_inputs(ctx)])
    results += guarded("non-contiguous grad_output", lambda: [_noncontiguous_grad(ctx)])
    results += guarded("in-place after forward", lambda: [_inplace_after_forward(ctx)])
    results += guarded("repeated backward", lambda: [_repeated_backward(ctx)])
    return results


def _batch_sizes(ctx: CheckContext) -> list[CheckResult]:
    if ctx.target.batch_size() is None:
        return [CheckResult("batch sizes", NOTE, "skipped: the case is not batched")]
    out = []
    mixing = ctx.case.batch_mixing or ctx.target.batch_mixing_layer()
    for size in (1, big_batch(ctx.target)):
        name = f"batch size {size}"
        if size == 1 and mixing:
            out.append(CheckResult(name, NOTE, "skipped: the case mixes samples"))
            continue
        if size == ctx.target.batch_size():  # the example's own batch: first order covers it
            status = PASS if ctx.first_order_ok else FAIL
            out.append(CheckResult(name, status, "the example's batch size: see first order"))
            continue

        def body(size=size, name=name) -> list[CheckResult]:
            target = ctx.derived(resized_inputs(ctx.target, size, ctx.seed))
            fn = FlatFunction(target)
            comp = ctx.compare(fn, context=name)
            pattern = None
            if size > 1 and ctx.first_order_ok and (ctx.target.batch_size() or 1) == 1:
                pattern = "only at batch size > 1"
            return [from_comparison(name, comp, fn, ctx, context_pattern=pattern)]

        out += guarded(name, body)
    return out


def _batched_slots(target: Target) -> list[int]:
    positions = set(target.batched_positions())
    return [i for i, s in enumerate(target.slots) if s.kind == "input" and s.position in positions]


def _subsets(ctx: CheckContext) -> CheckResult:
    name = "requires_grad subsets"
    k = len(ctx.target.slots)
    if k < 2:
        return CheckResult(name, PASS, "one differentiable tensor: nothing to vary")
    if 2**k - 2 <= MAX_SUBSETS:
        subsets = [list(c) for r in range(1, k) for c in itertools.combinations(range(k), r)]
    else:  # each alone and each left out
        subsets = [[i] for i in range(k)] + [[j for j in range(k) if j != i] for i in range(k)]
    worst = 0.0
    for subset in subsets:
        fn = FlatFunction(ctx.target, use=subset)
        labels = ", ".join(slot_label(s) for s in fn.slots)
        comp = ctx.compare(fn, context=f"only {labels} requiring grad")
        worst = max(worst, comp.max_rel_error)
        if not comp.ok:
            result = from_comparison(
                name,
                comp,
                fn,
                ctx,
                context_pattern="only when some inputs do not require grad"
                if ctx.first_order_ok
                else None,
                what=f"with only {{{labels}}} requiring grad",
            )
            return result
    return CheckResult(name, PASS, f"{len(subsets)} subsets", max_rel_error=worst)


def _noncontiguous_inputs(ctx: CheckContext) -> CheckResult:
    name = "non-contiguous inputs"
    if not any(s.kind == "input" and s.numel > 1 for s in ctx.target.slots):
        return CheckResult(name, NOTE, "skipped: no tensor input with more than one element")
    plain = ctx.flat()
    try:
        fn = FlatFunction(ctx.target, prepare=noncontiguous)
    except RuntimeError as exc:
        if "contiguous" in str(exc) or "stride" in str(exc):
            first = str(exc).splitlines()[0]
            return CheckResult(name, NOTE, f"rejects non-contiguous inputs with an error: {first}")
        raise
    if plain.y0 is not None and fn.y0 is not None:
        diff = amax(plain.y0 - fn.y0)
        scale = amax(plain.y0)
        if not diff <= 1e-10 * scale + 1e-300:
            i = int((plain.y0 - fn.y0).abs().argmax())
            out, idx = plain.locate_output(i)
            return CheckResult(
                name,
                FAIL,
                f"forward differs on non-contiguous inputs: {out}{list(idx)} is "
                f"{float(fn.y0[i]):.6g}, {float(plain.y0[i]):.6g} when contiguous "
                "(the forward reads memory as if contiguous)",
                max_rel_error=diff / (scale or 1.0),
                pattern="only with non-contiguous inputs",
            )
    comp = ctx.compare(fn, context="non-contiguous inputs")
    pattern = "only with non-contiguous inputs" if ctx.first_order_ok else None
    return from_comparison(name, comp, fn, ctx, context_pattern=pattern)


def _noncontiguous_grad(ctx: CheckContext) -> CheckResult:
    name = "non-contiguous grad_output"
    fn = FlatFunction(ctx.target, grad_layout=noncontiguous)
    comp = ctx.compare(fn, context="non-contiguous grad_output")
    pattern = "only with non-contiguous grad_output" if ctx.first_order_ok else None
    return from_comparison(name, comp, fn, ctx, context_pattern=pattern)


def _inplace_after_forward(ctx: CheckContext) -> CheckResult:
    """Add 1 to every input in place after forward: backward must raise or stay right."""
    name = "in-place after forward"
    target = ctx.target
    if not any(s.kind == "input" for s in target.slots):
        return CheckResult(name, NOTE, "skipped: no floating-point tensor input")
    fn = ctx.flat()
    if empty(fn):
        return CheckResult(name, PASS, "nothing to differentiate")
    gen = torch.Generator().manual_seed(ctx.seed + 3)
    v = rademacher(fn.m, gen)
    reference = fn.vjp(fn.x0, v)
    passed: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        c = t.clone()  # a non-leaf the user's code receives; ours to mutate afterwards
        passed.append(c)
        return c

    with torch.enable_grad(), target.rng():
        vals = fn.values_at(fn.x0, requires_grad=True)
        outs = fn._kept(target.call(vals, keep))
        with torch.no_grad():
            for c in passed:
                c.add_(1.0)
        try:
            grads = fn._grads(outs, vals, v, retain=False)
        except RuntimeError as exc:
            if "inplace operation" in str(exc) or "in-place" in str(exc):
                return CheckResult(name, PASS, "autograd raised, as it should")
            raise
    got = fn.flatten(grads)
    err = (got - reference).abs()
    scale = amax(reference)
    if bool((err <= 1e-9 * scale + 1e-300).all()):
        return CheckResult(name, PASS, "gradients unchanged", max_rel_error=0.0)
    j = int(err.argmax())
    label, idx = fn.locate_input(j)
    return CheckResult(
        name,
        FAIL,
        "gradients changed after the inputs were modified in place, and autograd did not "
        "raise: backward reads an input stashed on ctx (use ctx.save_for_backward)",
        max_rel_error=float(err.max()) / (scale or 1.0),
        pattern="input stashed on ctx, changed in place",
        mismatches=[
            Mismatch(label, idx, "v . out", None, float(got[j]), float(reference[j]), name)
        ],
    )


def _repeated_backward(ctx: CheckContext) -> CheckResult:
    """Backward twice through one graph, then once through a fresh forward: all identical."""
    name = "repeated backward"
    fn = ctx.flat()
    if empty(fn):
        return CheckResult(name, PASS, "nothing to differentiate")
    gen = torch.Generator().manual_seed(ctx.seed + 5)
    v = rademacher(fn.m, gen)
    first, second = fn.vjps(fn.x0, [v, v])
    fresh = fn.vjp(fn.x0, v)
    scale = amax(first) or 1.0
    for label, other in (
        ("second backward through the same graph", second),
        ("a fresh forward and backward", fresh),
    ):
        err = (other - first).abs()
        if not bool((err <= 1e-10 * scale).all()):
            j = int(err.argmax())
            slot, idx = fn.locate_input(j)
            return CheckResult(
                name,
                FAIL,
                f"{label} gives different gradients (backward mutates saved state?)",
                max_rel_error=float(err.max()) / scale,
                pattern="nondeterministic backward",
                mismatches=[
                    Mismatch(slot, idx, "v . out", None, float(other[j]), float(first[j]), label)
                ],
            )
    return CheckResult(name, PASS, "identical", max_rel_error=0.0)


__all__ = ["run", "resized_inputs", "big_batch", "FAIL"]
