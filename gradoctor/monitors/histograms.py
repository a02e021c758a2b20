"""Sampled per-module gradient histograms, NaN-safe, at a sparse interval.

Each module's gradients are flattened and, when larger than ``max_samples``, subsampled on
device with a private generator (the user's RNG streams are untouched). All samples travel
to the host in one transfer; non-finite values are counted and left out of the histogram.
Cost: one host sync and at most ``max_samples`` floats per module, every ``histogram_every`` steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradoctor.monitors.grad_norms import ParamIndex
from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.torch_private import local_tensor


class GradHistograms:
    def __init__(self, index: ParamIndex, max_samples: int, seed: int = 0):
        self.index = index
        self.max_samples = max_samples
        self._generators: dict[torch.device, torch.Generator] = {}
        self._seed = seed
        self._by_module: list[list[int]] = [[] for _ in index.modules]
        for i, col in enumerate(index.owner):
            self._by_module[col].append(i)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def sample(self) -> dict[str, tuple[np.ndarray, int]]:
        """``{module: (finite sampled gradient values, count of non-finite samples)}``."""
        pieces, names, sizes = [], [], []
        for name, members in zip(self.index.modules, self._by_module):
            grads = [
                local_tensor(self.index.params[i].grad)  # FSDP: this rank's shard
                for i in members
                if self.index.params[i].grad is not None
            ]
            if not grads:
                continue
            flat = torch.cat([g.detach().flatten().float() for g in grads])
            if flat.numel() > self.max_samples:
                pick = torch.randint(
                    flat.numel(),
                    (self.max_samples,),
                    device=flat.device,
                    generator=self._generator(flat.device),
                )
                flat = flat[pick]
            pieces.append(flat.to(pieces[0].device) if pieces else flat)
            names.append(name)
            sizes.append(flat.numel())
        if not pieces:
            return {}
        host = torch.cat(pieces).cpu().numpy()  # the one sync
        out, start = {}, 0
        for name, size in zip(names, sizes):
            values = host[start : start + size]
            start += size
            finite = np.isfinite(values)
            out[name] = (values[finite], int((~finite).sum()))
        return out


class HistogramInstrument(Instrument):
    """Gradient histograms every ``histogram_every`` steps, written straight to the
    TensorBoard sink (``grad_hist/<module>``, ``grad_hist_nonfinite/<module>``); one sync."""

    name = "histograms"

    def __init__(self, index: ParamIndex, max_samples: int, every: int, tb: Any):
        self.histograms = GradHistograms(index, max_samples)
        self.every, self.tb = every, tb

    def active(self, step: int) -> bool:
        return step % self.every == 0

    def before_update(self, view: StepView) -> None:
        for module, (values, nonfinite) in self.histograms.sample().items():
            self.tb.histogram(f"grad_hist/{module}", values, view.step)
            if nonfinite:
                self.tb.scalar(f"grad_hist_nonfinite/{module}", nonfinite, view.step)
