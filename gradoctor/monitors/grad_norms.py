"""Per-parameter gradient norms, clipping and update-to-weight ratios, on device.

Cost per optimizer step: one ``torch._foreach_norm`` and one ``torch.stack`` per
(device, dtype) group of gradients, no host sync (clipping adds the same work
``clip_grad_norm_`` does, which it replaces). On log steps only: a copy of the
parameters' values (small parameters in full, a fixed sample of ``UPDATE_SAMPLE`` values of
each large one) for the update norm, and two more ``_foreach_norm`` calls.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.torch_private import local_tensor

UPDATE_SAMPLE = 65536  # values kept per parameter for ||dW|| (relative noise ~ 1/sqrt of this)


# Under FSDP every norm here is a norm of the local shard (``local_tensor``); the squares are
# summed over ranks once per log interval (``gradoctor.distributed.aggregate``).


class ParamIndex:
    """The trainable parameters, their names, their owning modules and their foreach groups.

    ``owner[i]`` is the module that owns parameter ``i`` directly (non-decreasing: parameters
    are listed module by module); a module's squared norm is the sum of its parameters'.
    ``order`` is the parameter order of the concatenated group outputs (``[n_params]``).
    """

    def __init__(self, model: torch.nn.Module):
        self.params: list[torch.nn.Parameter] = []
        self.names: list[str] = []
        owner: list[int] = []
        self.modules: list[str] = []
        seen: set[int] = set()
        for qname, module in model.named_modules():
            own = [
                (n, p)
                for n, p in module.named_parameters(recurse=False)
                if p.requires_grad and id(p) not in seen
            ]
            if not own:
                continue
            self.modules.append(qname or "(root)")
            for n, p in own:
                seen.add(id(p))
                self.params.append(p)
                self.names.append(f"{qname}.{n}" if qname else n)
                owner.append(len(self.modules) - 1)
        self.owner = np.asarray(owner, dtype=np.int64)
        self._starts = (
            np.flatnonzero(np.r_[True, self.owner[1:] != self.owner[:-1]])
            if owner
            else np.zeros(0, np.int64)
        )
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
        for i, p in enumerate(self.params):
            groups[(p.device, p.dtype)].append(i)
        self.groups = list(groups.values())
        self.order = np.asarray([i for idx in self.groups for i in idx], dtype=np.int64)
        self.unpermute = np.argsort(self.order)

    def __len__(self) -> int:
        return len(self.params)

    def per_module(self, param_values: np.ndarray) -> np.ndarray:
        """``[..., n_params]`` norms -> ``[..., n_modules]`` norms (root of summed squares).

        A segment sum, not a matmul: ``inf * 0`` would leak NaN into other modules."""
        squares = np.square(param_values.astype(np.float64))
        with np.errstate(invalid="ignore", over="ignore"):
            return np.sqrt(np.add.reduceat(squares, self._starts, axis=-1))


class GradNormRecorder:
    """Per-parameter norms of the (unscaled, accumulated) gradients as one device vector."""

    def __init__(self, index: ParamIndex, device: torch.device):
        self.index = index
        self.device = device
        self._group_params = [[index.params[i] for i in idx] for idx in index.groups]
        self._zeros = [
            torch.zeros((), device=ps[0].device, dtype=ps[0].dtype) for ps in self._group_params
        ]
        self._before: list[torch.Tensor] | None = None  # reused buffers (see before_update)
        self._sample_idx: list[tuple[torch.Tensor | None, float]] | None = None
        self._armed = False
        self._factors: list[torch.Tensor] | None = None

    def _grads(self, k: int) -> list[torch.Tensor]:
        zero = self._zeros[k]
        return [local_tensor(p.grad) if p.grad is not None else zero for p in self._group_params[k]]

    def record(self) -> torch.Tensor:
        """``[n_params]`` float32 on the training device, in ``index.order``; a missing grad is 0."""
        parts = [
            torch.stack(torch._foreach_norm(self._grads(k))) for k in range(len(self._group_params))
        ]
        if len(parts) == 1:
            return parts[0].float()
        return torch.cat([p.to(self.device, torch.float32) for p in parts])

    def record_absmax(self) -> torch.Tensor:
        """``[n_params]`` max |grad| (float32, ``index.order``): one more ``_foreach_norm``."""
        parts = [
            torch.stack(torch._foreach_norm(self._grads(k), float("inf")))
            for k in range(len(self._group_params))
        ]
        return torch.cat([p.to(self.device, torch.float32) for p in parts])

    def clip(self, norms: torch.Tensor, max_norm: float) -> None:
        """Scale every gradient by ``min(1, max_norm / (total + 1e-6))`` (clip_grad_norm_'s rule)."""
        coef = (max_norm / (torch.linalg.vector_norm(norms) + 1e-6)).clamp(max=1.0)
        for params in self._group_params:
            grads = [local_tensor(p.grad) for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, coef.to(grads[0].device))

    def _update_views(self) -> list[torch.Tensor]:
        """Per parameter (in ``index.params`` order): its flat values, or a fixed random sample
        of ``UPDATE_SAMPLE`` of them for large parameters (the same indices every time)."""
        if self._sample_idx is None:
            gen = torch.Generator().manual_seed(0)  # private: the user's RNG streams stay untouched
            self._sample_idx = []
            for p in self.index.params:
                t = local_tensor(p.detach())
                n = t.numel()
                idx = (
                    None
                    if n <= UPDATE_SAMPLE
                    else torch.randperm(n, generator=gen)[:UPDATE_SAMPLE].to(t.device)
                )
                self._sample_idx.append(
                    (idx, math.sqrt(n / UPDATE_SAMPLE) if idx is not None else 1.0)
                )
        views = []
        for p, (idx, _) in zip(self.index.params, self._sample_idx):
            flat = local_tensor(p.detach()).reshape(-1)
            views.append(flat if idx is None else flat.index_select(0, idx))
        return views

    def before_update(self) -> None:
        """Keep the parameters' values before the optimizer step (log steps only). Memory: the
        small parameters in full, ``UPDATE_SAMPLE`` values of each large one, in buffers reused
        across intervals — never a second copy of a large model."""
        views = self._update_views()
        if self._before is None:
            self._before = [v.clone() for v in views]
        else:
            torch._foreach_copy_(self._before, views)
        self._armed = True

    def after_update(self) -> torch.Tensor | None:
        """``[2, n_params]`` (||p_new - p_old||, ||p_new||) in ``index.order``, or None.

        For a sampled parameter both norms are the sample's, scaled by sqrt(numel / sample):
        unbiased estimates of the full norms, whose ratio is the sample's ratio."""
        if not self._armed:
            return None
        self._armed = False
        new = self._update_views()
        torch._foreach_sub_(self._before, new)  # in place: the buffers now hold old - new
        if self._factors is None:  # per group: the sampled parameters' sqrt(numel / sample)
            scale = [s for _, s in self._sample_idx]
            self._factors = [
                torch.tensor(
                    [scale[i] for i in idx], dtype=torch.float64, device=new[idx[0]].device
                )
                for idx in self.index.groups
            ]
        rows = []
        for idx, factor in zip(self.index.groups, self._factors):
            upd = torch.stack(torch._foreach_norm([self._before[i] for i in idx]))
            par = torch.stack(torch._foreach_norm([new[i] for i in idx]))
            rows.append(
                (torch.stack((upd, par)) * factor.to(upd.dtype)).to(self.device, torch.float32)
            )
        return torch.cat(rows, dim=1)


class GradNormTracker(Instrument):
    """Per-parameter norms of the unscaled gradients on every step (one ``_foreach_norm`` per
    dtype group, shared with clipping; kept on the device, copied at the flush)."""

    name = "grad_norms"

    def after_unscale(self, view: StepView) -> None:
        view.grad_norms()


class UpdateRatio(Instrument):
    """||ΔW|| / ||W|| per parameter on each log step (the interval's last step): the
    parameters' values before the optimizer step (sampled for large ones) and two more
    ``_foreach_norm`` after it; the result goes to the interval collector."""

    name = "update_ratio"

    def __init__(self, recorder: GradNormRecorder, collector: Any, every: int, last_step: int):
        self.recorder, self.collector = recorder, collector
        self.every, self.last = every, last_step

    def active(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def before_update(self, view: StepView) -> None:
        self.recorder.before_update()

    def after_update(self, view: StepView) -> None:
        self.collector.update = self.recorder.after_update()
