"""Autocast and dynamic loss scaling for fp32 / bf16 / fp16."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from gradoctor.recipe.schema import GradScalerConfig
from gradoctor.torch_private import scaler_scale

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A fresh autocast context for one forward pass (``nullcontext`` for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def make_scaler(
    precision: str, device: torch.device, config: GradScalerConfig
) -> torch.amp.GradScaler:
    """``torch.amp.GradScaler``, enabled only for fp16 (a disabled scaler is a pass-through)."""
    return torch.amp.GradScaler(
        device.type,
        init_scale=config.init_scale,
        growth_factor=config.growth_factor,
        backoff_factor=config.backoff_factor,
        growth_interval=config.growth_interval,
        enabled=precision == "fp16",
    )


def scale_tensor(scaler: torch.amp.GradScaler, device: torch.device) -> torch.Tensor:
    """The scaler's current scale as a device tensor (no host sync); 1.0 when disabled."""
    live = scaler_scale(scaler)
    if live is not None:
        return live.reshape(())
    return torch.ones((), device=device)
