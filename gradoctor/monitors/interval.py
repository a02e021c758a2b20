"""The interval collector: per-step device statistics, copied to the host in one transfer.

Each step appends 0-d/1-d device tensors it already has (no extra kernels); ``flush()``
stacks them and makes the interval's only device->host copy (the one host sync).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class IntervalData:
    """Host copy of one interval: ``loss``/``scale`` ``[n_steps]``, ``grad_norms``
    ``[n_steps, n_params]`` (parameter order), ``update_norms``/``param_norms`` ``[n_params]``
    for the interval's last step (zeros when not measured); ``extra``: what a distributed
    ``reduce`` gathered (per-rank slots), else None."""

    loss: np.ndarray
    scale: np.ndarray
    grad_norms: np.ndarray
    update_norms: np.ndarray
    param_norms: np.ndarray
    extra: np.ndarray | None = None


class IntervalCollector:
    def __init__(self, n_params: int, unpermute: np.ndarray, device: torch.device):
        self.n_params = n_params
        self.unpermute = unpermute
        self.device = device
        self.loss: list[torch.Tensor] = []
        self.scale: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.update: torch.Tensor | None = None

    @property
    def used(self) -> int:
        return len(self.loss)

    def append(self, loss: torch.Tensor, scale: torch.Tensor | None, norms: torch.Tensor) -> None:
        """``loss`` 0-d, ``scale`` 0-d or None (no scaler), ``norms`` ``[n_params]`` float32."""
        self.loss.append(loss)
        if scale is not None:
            self.scale.append(scale)
        self.norms.append(norms)

    def reset(self) -> None:
        """Drop what was appended since the last flush."""
        self.loss, self.scale, self.norms, self.update = [], [], [], None

    def flush(self, reduce: Callable[..., tuple] | None = None) -> IntervalData:
        """One device->host transfer for the whole interval (syncs), then reset.

        ``reduce`` (distributed runs): ``(loss [n], norms [n, p], scale [n] | None, update
        [2, p] | None) -> (the same reduced over ranks, extra [k])``, called on the device
        tensors just before the transfer so its collective rides on the same sync."""
        n = self.used
        loss, norms = torch.stack(self.loss).float().reshape(-1), torch.stack(self.norms)
        scale = torch.stack(self.scale).float().reshape(-1) if self.scale else None
        update, extra = self.update, None
        if reduce is not None:
            loss, norms, scale, update, extra = reduce(loss, norms, scale, update)
        parts = [loss, norms.reshape(-1)]
        if scale is not None:
            parts.append(scale)
        if update is not None:
            parts.append(update.reshape(-1))
        if extra is not None:
            parts.append(extra)
        # float64 on the way out: exact for the float32 statistics and for byte counts.
        host = torch.cat([p.to(self.device, torch.float64) for p in parts]).cpu().numpy()
        p = self.n_params
        loss, rest = host[:n], host[n:]
        norms, rest = rest[: n * p].reshape(n, p)[:, self.unpermute], rest[n * p :]
        if self.scale:
            scale, rest = rest[:n], rest[n:]
        else:
            scale = np.ones(n)
        if update is not None:
            upd, rest = rest[: 2 * p].reshape(2, p)[:, self.unpermute], rest[2 * p :]
        else:
            upd = np.zeros((2, p))
        self.loss, self.scale, self.norms, self.update = [], [], [], None
        return IntervalData(loss, scale, norms, upd[0], upd[1], rest if extra is not None else None)


@dataclass
class Interval:
    """What instruments receive at a flush (host side): the interval's ``steps``, its host
    ``data``, the run's ``history`` (``gradoctor.training.history.History``; instruments
    append their series to it) and ``last_scalars``, TensorBoard scalars an instrument adds
    to the interval's last step event (``{tag: value}``)."""

    steps: list[int]
    data: IntervalData
    history: Any
    last_scalars: dict[str, float]

    @property
    def last_step(self) -> int:
        return self.steps[-1]
