"""The scalar an explanation explains: one number per example, from whatever the model returns.

``scores_fn(model, forward)`` returns ``F(inputs) -> [B, C]`` (or ``[B]``), and ``pick``
selects each row's target:

- ``forward`` given: ``forward(model, inputs)`` must return ``[B]`` or ``[B, C]`` (it selects
  the scores of a dict, a tuple, a loss object...).
- otherwise the model's output (its ``.logits`` or ``["logits"]`` when it has them) must be a
  tensor: ``[B]`` is used as is; ``[B, C]`` gives column ``target[b]``; ``[B, T, C]`` (a
  sequence model's logits) the last position's column ``target[b]`` (the next-token
  prediction). Anything else is a UsageError that says to pass ``forward``.

``target`` is a ``[B]`` long tensor (per example) or None for ``[B]`` outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradoctor.errors import UsageError

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def logits_of(model: nn.Module, inputs: torch.Tensor, forward: Forward | None) -> torch.Tensor:
    """The per-class scores ``[B, C]`` (or ``[B]`` for a scalar-per-example model): the model's
    tensor output, its last position for ``[B, T, C]``, or ``forward``'s ``[B]``."""
    out = forward(model, inputs) if forward is not None else model(inputs)
    if not isinstance(out, torch.Tensor):
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, dict):
            logits = out.get("logits")
        out = logits if isinstance(logits, torch.Tensor) else out
    if not isinstance(out, torch.Tensor):
        raise UsageError(
            f"the model returned {_describe(out)}: an explanation needs one number per example",
            hint="pass forward=lambda model, x: <the [B] scalar to explain> (e.g. "
            "model(x).logits[:, k] or model(x)['score'])",
        )
    if out.dim() == 3:
        out = out[:, -1]
    if out.dim() not in (1, 2) or out.shape[0] != inputs.shape[0]:
        raise UsageError(
            f"the model returned {_describe(out)} for {inputs.shape[0]} example(s): cannot "
            "reduce it to one number per example",
            hint="pass forward=lambda model, x: <a [B] tensor>",
        )
    return out


def check_target(scores: torch.Tensor, target: torch.Tensor | None) -> None:
    if scores.dim() == 1 or target is None:
        return
    bad = (target < 0) | (target >= scores.shape[1])
    if bool(bad.any()):
        raise UsageError(
            f"target index {int(target[bad][0])} is out of range: the model has "
            f"{scores.shape[1]} outputs",
            hint=f"pass --target between 0 and {scores.shape[1] - 1}, or auto",
        )


def scores_fn(model: nn.Module, forward: Forward | None) -> Callable[..., torch.Tensor]:
    """``F(x) -> [rows, C]`` (or ``[rows]``): what Captum is given, with the target passed to
    it per example (it repeats targets and extra arguments along its interpolation rows)."""

    def f(inputs: torch.Tensor) -> torch.Tensor:
        return logits_of(model, inputs, forward)

    return f


def pick(scores: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """``[rows]``: each row's target score (``target`` per row), or the scores themselves."""
    if scores.dim() == 1 or target is None:
        return scores
    return scores.gather(1, target.to(scores.device)[:, None]).squeeze(1)


__all__ = ["Forward", "check_target", "logits_of", "pick", "scores_fn"]
