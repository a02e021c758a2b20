"""Naming the shape of a gradient bug from analytic/numeric pairs.

Value patterns compare ``a = (J^T v)`` from backward with ``n`` from finite differences on
one slot: zero (gradient missing), sign flipped, constant factor, transposed. Batch patterns
look at where the wrong entries sit. Context patterns ("only at batch size > 1") are added by
the checks themselves, which know the context they ran in. A numeric gradient that is 0
almost everywhere while the forward does move at larger steps is a piecewise-constant
forward (round, sign, sampling) with a surrogate backward: a straight-through estimator,
which the case should declare (``surrogate=``) rather than fail.
"""

from __future__ import annotations

import torch

from gradoctor.gradcheck.jacobian import numeric_vjp, rademacher
from gradoctor.gradcheck.result import Mismatch

NUMERIC_SLOT_BUDGET = 256  # elements of one slot differentiated numerically for a pattern
STE_HINT = (
    "numeric gradient 0 almost everywhere, yet the forward is not constant: a straight-"
    "through estimator (round, sign, sampling)? declare the function whose derivative the "
    'backward computes: Case(..., surrogate=fn) or gradoctor_case = {"surrogate": fn}'
)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(((a - b).abs() <= tol * scale + 1e-12).all())


def value_pattern(a: torch.Tensor, n: torch.Tensor, shape: tuple[int, ...] | None) -> str | None:
    """Name how ``a`` (analytic) relates to ``n`` (numeric); None when no simple relation."""
    a, n = a.reshape(-1).double(), n.reshape(-1).double()
    if float(n.abs().max()) == 0.0:
        return "spurious gradient (numeric gradient is zero)" if float(a.abs().max()) else None
    if float(a.abs().max()) <= 1e-9 * float(n.abs().max()):
        return "zero (gradient missing)"
    c = float(a @ n) / float(n @ n)
    if _close(a, c * n):
        if abs(c + 1) < 1e-3:
            return "sign flipped"
        if abs(c - 1) > 1e-3:
            return f"constant factor (analytic = {c:.4g} x numeric)"
    if shape is not None and len(shape) >= 2 and shape[-1] == shape[-2]:
        if _close(a.reshape(shape).transpose(-1, -2).reshape(-1), n):
            return "transposed"
    nz = (a - n).abs() > 1e-3 * float(n.abs().max())
    if int(nz.sum()) == 0:
        return None  # not reproducible from a fresh forward (a stateful backward?)
    if int(nz.sum()) * 10 <= nz.numel():
        return f"a few entries wrong ({int(nz.sum())} of {nz.numel()})"
    return None


def pattern_for(fn, mismatches: list[Mismatch], seed: int = 0) -> str | None:
    """The value pattern of the slot holding the worst mismatch (``mismatches`` deduplicated).

    Differentiates that slot numerically (2 forwards per element) when it has at most
    NUMERIC_SLOT_BUDGET elements; otherwise judges from the located entries alone.
    """
    if not mismatches or not hasattr(fn, "slots"):
        return None
    worst = mismatches[0]
    k = next((i for i, s in enumerate(fn.slots) if _label(s) == worst.input), None)
    if k is None:
        return None
    if fn.sizes[k] <= NUMERIC_SLOT_BUDGET:
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(fn.m, generator=gen, dtype=torch.float64)
        start = sum(fn.sizes[:k])
        a = fn.vjp(fn.x0, v)[start : start + fn.sizes[k]]
        n = numeric_vjp(fn, v, k)
        if _straight_through(fn, k, a, n, seed):
            return STE_HINT
        return value_pattern(a, n, fn.slots[k].shape)
    same = [m for m in mismatches if m.input == worst.input]
    a = torch.tensor([m.analytic for m in same])
    n = torch.tensor([m.numeric for m in same])
    if len(same) >= 3 and _straight_through(fn, k, a, n, seed):
        return STE_HINT
    if len(same) < 3:  # too few located entries to call a relation between a and n
        return f"isolated: {len(same)} wrong entr{'y' if len(same) == 1 else 'ies'} located"
    return value_pattern(a, n, None)


def _straight_through(fn, k: int, a: torch.Tensor, n: torch.Tensor, seed: int) -> bool:
    """An undeclared straight-through estimator on slot ``k``: the numeric gradient ``n`` is
    ~0 on at least 90% of the entries (a jump within the step accounts for the rest) where
    the analytic ``a`` mostly is not, and the forward does change when the slot moves by a
    large step (half its RMS plus 0.5): piecewise constant, not constant. Two forwards."""
    if getattr(fn, "surrogate", False) or not hasattr(fn, "value") or n.numel() == 0:
        return False
    a, n = a.reshape(-1).double(), n.reshape(-1).double()
    scale = float(a.abs().max())
    if scale == 0.0:
        return False
    zero = n.abs() <= 1e-9 * scale
    if (
        float(zero.double().mean()) < 0.9
        or float((a[zero].abs() > 1e-9 * scale).double().mean()) < 0.1
    ):
        return False
    start = sum(fn.sizes[:k])
    gen = torch.Generator().manual_seed(seed + 23)
    d = torch.zeros(fn.n, dtype=torch.float64)
    piece = fn.x0[start : start + fn.sizes[k]]
    rms = float(piece.pow(2).mean().sqrt()) if piece.numel() else 0.0
    d[start : start + fn.sizes[k]] = rademacher(fn.sizes[k], gen) * (0.5 + 0.5 * rms)
    return not torch.equal(fn.value(fn.x0 + d), fn.value(fn.x0))


def off_diagonal_batch(mismatches: list[Mismatch], batched_inputs: set[str]) -> bool:
    """All wrong entries link sample i of an output to sample j != i of an input."""
    located = [m for m in mismatches if m.output_index and m.input_index]
    if not located or len(located) != len(mismatches):
        return False
    return all(m.input in batched_inputs and m.input_index[0] != m.output_index[0] for m in located)


def join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def _label(slot) -> str:
    return slot.name if slot.kind == "input" else f"param {slot.name}"
