"""The loss as a pure function of the trainable parameters, and the flat parameter layout.

``ParamLayout`` maps the P trainable parameters (``requires_grad``, in ``named_parameters()``
order, tied ones once) to one flat vector and back. ``FunctionalLoss.batch_loss(params, batch)``
runs ``loss_fn(model, batch)`` through ``torch.func.functional_call`` with ``params`` and fresh
clones of every buffer, so BatchNorm in train mode updates clones, never the live running
statistics, and torch.func transforms see no mutation of a captured tensor.

Cost of ``batch_loss``: one forward of the model on one batch plus a copy of every buffer.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from gradoctor.errors import UsageError, UserCodeError
from gradoctor.torch_private import pytree

LossFn = Callable[[nn.Module, Any], torch.Tensor]

PRECISION_NAMES = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}


@dataclass(frozen=True)
class ParamLayout:
    """Where each trainable parameter sits in the flat vector of length ``size`` (= P)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]  # the dtype HVPs run in, per parameter
    offsets: tuple[int, ...]  # start of each parameter in the flat vector
    size: int
    devices: tuple[torch.device, ...]  # per parameter (a model may span devices)

    @property
    def device(self) -> torch.device:
        """Where flat vectors live: the first parameter's device."""
        return self.devices[0]

    @classmethod
    def of(cls, model: nn.Module, dtype: torch.dtype | None) -> ParamLayout:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise UsageError(
                "the model has no trainable parameters (none with requires_grad=True)",
                hint="the Hessian is taken w.r.t. trainable parameters; unfreeze some",
            )
        offsets, total = [], 0
        for _, p in named:
            offsets.append(total)
            total += p.numel()
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(p.shape for _, p in named),
            dtypes=tuple(dtype or p.dtype for _, p in named),
            offsets=tuple(offsets),
            size=total,
            devices=tuple(p.device for _, p in named),
        )

    def precision(self) -> str:
        names = sorted({PRECISION_NAMES.get(d, str(d)) for d in self.dtypes})
        return names[0] if len(names) == 1 else "mixed (" + ", ".join(names) + ")"

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[P]`` tensor (any float dtype, any device) -> ``{name: tensor}``, each in its
        parameter's HVP dtype and on its device."""
        return {
            name: flat[o : o + shape.numel()].view(shape).to(device=device, dtype=dtype)
            for name, shape, dtype, device, o in zip(
                self.names, self.shapes, self.dtypes, self.devices, self.offsets
            )
        }

    def flatten(self, tensors: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """``{name: tensor}`` -> ``[P]`` float64 on ``device`` (None -> zeros)."""
        parts = [
            torch.zeros(shape.numel(), dtype=torch.float64, device=self.device)
            if tensors.get(name) is None
            else tensors[name].reshape(-1).to(self.device, torch.float64)
            for name, shape in zip(self.names, self.shapes)
        ]
        return torch.cat(parts)

    def module_blocks(self) -> dict[str, list[int]]:
        """``{module qualified name: [parameter indices]}`` for each module owning trainable
        parameters directly ("<root>" for the model itself)."""
        blocks: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            module = name.rpartition(".")[0] or "<root>"
            blocks.setdefault(module, []).append(i)
        return blocks


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: lets ``functional_call`` swap the model's
    tensors for the user's loss function, which calls the model itself."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class FunctionalLoss:
    """The per-batch losses of ``loss_fn`` over ``batches`` as functions of the parameters."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        layout: ParamLayout,
        dtype: torch.dtype | None,
    ):
        self.model = model
        self.layout = layout
        self.batches = [_cast_batch(b, dtype) for b in batches] if dtype else list(batches)
        self._wrapper = _LossModule(model, loss_fn)
        live = dict(model.named_parameters())
        # Detached views of the live parameters (no copy unless a dtype cast is asked for).
        self.params = {n: live[n].detach().to(d) for n, d in zip(layout.names, layout.dtypes)}
        # Buffers and frozen parameters, cast with the trainable ones (buffers are cloned per
        # evaluation, so in-place updates such as BatchNorm's running statistics hit clones).
        self._buffers = {n: _cast(b, dtype) for n, b in model.named_buffers()}
        self._frozen = {n: _cast(p.detach(), dtype) for n, p in live.items() if not p.requires_grad}

    def batch_loss(self, params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """The loss on one batch at ``params`` (``{name: tensor}``, the trainable ones)."""
        tensors = {f"model.{n}": t for n, t in self._frozen.items()}
        tensors.update({f"model.{n}": t for n, t in params.items()})
        tensors.update({f"model.{n}": b.clone() for n, b in self._buffers.items()})
        return functional_call(self._wrapper, tensors, (batch,))

    def mean_loss(self) -> torch.Tensor:
        """The mean over batches at the live parameters, without autograd (a check, not an
        HVP). Raises UserCodeError when ``loss_fn`` raises or returns no finite scalar."""
        return self.total_loss() / len(self.batches)

    def total_loss(self) -> torch.Tensor:
        """The sum over batches (0 without batches: a rank with no share), as ``mean_loss``."""
        total = None
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                loss = self._checked_loss(batch, i)
                total = loss if total is None else total + loss
        if total is None:
            return torch.zeros((), dtype=torch.float64, device=self.layout.device)
        return total

    def _checked_loss(self, batch: Any, index: int) -> torch.Tensor:
        try:
            loss = self.batch_loss(self.params, batch)
        except Exception as exc:  # the user's model or loss function
            raise UserCodeError(
                f"loss_fn(model, batch) raised {type(exc).__name__} on batch {index}: {exc}",
                user_traceback="".join(traceback.format_exception(exc)[-6:]),
                hint="make loss_fn(model, batch) run on its own first (it returns one scalar "
                "tensor)",
            ) from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = (
                f"a tensor of shape {tuple(loss.shape)}"
                if isinstance(loss, torch.Tensor)
                else type(loss).__name__
            )
            raise UserCodeError(
                f"loss_fn(model, batch) returned {what} on batch {index}, not a scalar tensor",
                hint="reduce the loss to one number (e.g. .mean()); the Hessian is that of a "
                "scalar",
            )
        if not loss.is_floating_point() or not torch.isfinite(loss).all():
            raise UserCodeError(
                f"loss_fn(model, batch) returned {loss.item()!r} ({loss.dtype}) on batch "
                f"{index}, not a finite floating-point number",
                hint="measure curvature at parameters where the loss is finite",
            )
        return loss.reshape(())


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _cast_batch(batch: Any, dtype: torch.dtype) -> Any:
    """Floating tensors anywhere in ``batch`` (nested lists/tuples/dicts) cast to ``dtype``."""
    return pytree.tree_map(lambda x: _cast(x, dtype) if isinstance(x, torch.Tensor) else x, batch)
