"""Sampled activation statistics: dead ReLU units and fp16 headroom.

On a sampled step, forward hooks go on every leaf module for that step's forward only
(removed right after it, so checkpoint recomputation in backward never sees them) and keep,
on device: the max |output| per leaf module, and per ReLU-family call site which units were
ever positive, and the RMS of each leaf module's output (its first call's, on the first
sampled forward of a window: the scale at each depth, for ``exploding_activations``). A "unit" is dim 1 of a 2-D or 4-D/5-D (channels-first) output and the last dim
of a 3-D ``[B, T, F]`` output. Cost on a sampled step: one abs/amax per leaf module plus one
``any`` per ReLU, one mean of squares per leaf; nothing on other steps. ``take()`` moves a window's results to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.monitors.interval import Interval

RELU_FAMILY = (nn.ReLU, nn.ReLU6)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _unit_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The dims reduced away to leave the unit dim."""
    unit = t.dim() - 1 if t.dim() == 3 else 1
    return tuple(d for d in range(t.dim()) if d != unit)


class ActivationSampler:
    def __init__(self, model: nn.Module):
        self.leaves = [
            (n, m) for n, m in model.named_modules() if not any(True for _ in m.children())
        ]
        self.absmax: dict[str, torch.Tensor] = {}
        self.rms: dict[str, torch.Tensor] = {}  # first call of each leaf, first forward
        self.alive: dict[str, torch.Tensor] = {}
        self.order: list[str] = []  # leaf modules in forward execution order (first sample)
        self.samples = 0
        self._calls: dict[str, int] = {}

    @contextlib.contextmanager
    def hooks(self, active: bool) -> Iterator[None]:
        """Forward hooks on every leaf module for the duration of one forward pass."""
        if not active:
            yield
            return
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.leaves]
        self._calls = {}
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.samples += 1

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is None or not t.is_floating_point() or t.numel() == 0:
                return
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            if self.samples == 0 and call == 0:
                self.order.append(name)
            with torch.no_grad():
                peak = t.detach().abs().amax().float()
                prev = self.absmax.get(name)
                self.absmax[name] = peak if prev is None else torch.maximum(prev, peak)
                if call == 0 and name not in self.rms:
                    self.rms[name] = t.detach().float().square().mean().sqrt()
                if isinstance(module, RELU_FAMILY) and t.dim() >= 2:
                    key = name if call == 0 else f"{name}#{call}"
                    positive = (
                        (t.detach() > 0).any(dim=_unit_dims(t)) if t.dim() > 1 else (t.detach() > 0)
                    )
                    prev_alive = self.alive.get(key)
                    if prev_alive is None or prev_alive.shape != positive.shape:
                        self.alive[key] = positive
                    else:
                        self.alive[key] = prev_alive | positive

        return hook

    def take(self) -> dict[str, Any]:
        """Host copy of the window: ``{"absmax": {module: float}, "rms": {module: float},
        "dead": {site: fraction},
        "units": {site: n}}``, then reset. One small transfer (called at a flush)."""
        names, rms_names, sites = list(self.absmax), list(self.rms), list(self.alive)
        parts = [self.absmax[n].reshape(1) for n in names]
        parts += [self.rms[n].reshape(1) for n in rms_names]
        parts += [(~self.alive[s]).float().mean().reshape(1) for s in sites]
        if not parts:
            return {"absmax": {}, "rms": {}, "dead": {}, "units": {}}
        device = parts[0].device
        host = torch.cat([p.to(device) for p in parts]).cpu().tolist()
        a, r = len(names), len(names) + len(rms_names)
        out = {
            "absmax": dict(zip(names, host[:a])),
            "rms": dict(zip(rms_names, host[a:r])),
            "dead": dict(zip(sites, host[r:])),
            "units": {s: int(self.alive[s].numel()) for s in sites},
        }
        self.absmax.clear()
        self.rms.clear()
        self.alive.clear()
        return out


class ActivationInstrument(Instrument):
    """Dead units and fp16 headroom on the run's first step and every ``activation_every``:
    the sampler's forward hooks, and each parameter's max |grad| (unscaled, after clipping)
    with the loss scale in force. At the flush both move to the run's history."""

    name = "activations"

    def __init__(self, model: nn.Module, index: Any, every: int, start_step: int):
        self.sampler = ActivationSampler(model)
        self.index, self.every, self.start_step = index, every, start_step
        self._grad_absmax: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []

    def active(self, step: int) -> bool:
        return self.every > 0 and (step - self.start_step == 1 or step % self.every == 0)

    def forward(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self.sampler.hooks(True)

    def before_update(self, view: StepView) -> None:
        scale = view.loss_scale()
        scale = scale.clone() if scale is not None else torch.ones((), device=view.device)
        self._grad_absmax.append((view.step, view.norms.record_absmax(), scale))

    def reset(self) -> None:
        self._grad_absmax.clear()

    def flush(self, interval: Interval) -> None:
        """Small transfers, only at flushes that follow a sampled step."""
        h = interval.history
        sampler = self.sampler
        if sampler.samples and sampler.absmax:
            window = sampler.take()
            h.activation_steps.append(interval.last_step)
            for name, value in window["absmax"].items():
                h.act_absmax.setdefault(name, []).append(value)
            for name, value in window["rms"].items():
                h.act_rms.setdefault(name, []).append(value)
            for site, frac in window["dead"].items():
                h.dead_fraction.setdefault(site, []).append(frac)
            h.relu_units.update(window["units"])
            if not h.forward_order:
                h.forward_order = list(sampler.order)
        for step, absmax, scale in self._grad_absmax:
            values = absmax.cpu().numpy()[self.index.unpermute]  # unscaled max |grad|
            per_module = np.zeros(len(self.index.modules))
            np.maximum.at(per_module, self.index.owner, values)
            h.grad_absmax_steps.append(step)
            h.grad_absmax.append(per_module.tolist())
            h.grad_absmax_scale.append(float(scale))
        self._grad_absmax.clear()
