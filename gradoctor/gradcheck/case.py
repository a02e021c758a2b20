"""The public ``Case``: one thing whose gradients are checked, and how to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Case:
    """A function, ``torch.autograd.Function`` or ``nn.Module`` with example inputs.

    Called as ``fn(*inputs, **kwargs)`` (``fn.apply(...)`` for a Function class). Gradients
    are checked with respect to every floating-point tensor in ``inputs`` and every parameter
    of a module, in float64 on copies (the objects given here are never modified).
    """

    name: str
    fn: Callable[..., Any] | type[torch.autograd.Function] | torch.nn.Module
    inputs: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Dim 0 of the tensor inputs and outputs indexes independent samples. False opts out of
    # the batch-size contexts and the batch-independence check (e.g. for plain tensor ops).
    batched: bool = True
    # True when samples legitimately interact (a batch norm, a loss over the batch): the
    # batch-independence check is skipped. Modules holding BatchNorm layers are detected.
    batch_mixing: bool = False
    # None: checked unless the backward is marked ``once_differentiable``; False: skipped.
    double_backward: bool | None = None
    # Per-entry tolerance of the first-order comparison: |analytic - numeric| <=
    # atol * max|J| + rtol * |numeric| (atol is relative to the Jacobian's largest entry).
    atol: float = 1e-5
    rtol: float = 1e-3
    # A straight-through estimator's backward (quantisation, binarisation, sampling) is on
    # purpose not the derivative of its forward: name the function whose derivative it should
    # equal (the identity for the classic STE of ``round``, ``F.hardtanh`` for the clipped
    # one). It is called like the case -- ``surrogate(*inputs, **kwargs)``; for a Module
    # case ``surrogate(module, *inputs, **kwargs)``, as ``forward(self, ...)`` is -- and must
    # return outputs of the same shapes. Finite differences are then taken of it, not of the
    # forward, in every first-order comparison; checks that compare only the case with itself
    # (double backward, repeated backward, forward values) are unchanged.
    surrogate: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, list):
            self.inputs = tuple(self.inputs)
        elif not isinstance(self.inputs, tuple):
            self.inputs = (self.inputs,)


def callable_of(fn: Any) -> Callable[..., Any]:
    """What to call: ``Fn.apply`` for a Function class, the object itself otherwise."""
    if isinstance(fn, type) and issubclass(fn, torch.autograd.Function):
        return fn.apply
    return fn
