"""A one-step snapshot for replaying a bad step: weights, optimizer, scaler, scheduler, RNG, data.

On CUDA the tensors go to pinned host buffers with non-blocking copies queued on the current
stream (no host sync; stream order guarantees the pre-step values are read); the buffers are
allocated once and reused. Cost: one copy of parameters + optimizer state every
``snapshot_every`` steps; memory: that much pinned host memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from gradoctor.train.environment import capture_rng


class Snapshot:
    def __init__(self, device: torch.device):
        self.pin = device.type == "cuda"
        self._buffers: dict[str, torch.Tensor] = {}
        self.state: dict[str, Any] | None = None
        self.step = -1

    def _copy(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            buf = self._buffers.get(key)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = torch.empty(
                    obj.shape, dtype=obj.dtype, device="cpu", pin_memory=self.pin and obj.is_cuda
                )
                self._buffers[key] = buf
            buf.copy_(obj.detach(), non_blocking=True)
            return buf
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, f"{key}/{i}") for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def take(self, trainer: Any) -> None:
        """Record the trainer's state at the current step boundary."""
        self.step = trainer.step_count
        self.state = {
            "model": self._copy(trainer.model.state_dict(), "model"),
            "optimizer": self._copy(trainer.optimizer.state_dict(), "optimizer"),
            "scaler": copy.deepcopy(trainer.scaler.state_dict()),
            "scheduler": copy.deepcopy(trainer.scheduler.state_dict())
            if trainer.scheduler is not None
            else None,
            "rng": capture_rng(),
            "data": trainer.data.state(),
        }
        scaler = trainer.scaler
        if (
            scaler.is_enabled() and scaler._scale is not None
        ):  # live device values (lazy before step 1)
            self.state["scaler_scale"] = self._copy(scaler._scale, "scale")
            self.state["scaler_growth"] = self._copy(scaler._growth_tracker, "growth")

    def restore(self, trainer: Any) -> None:
        """Put the trainer back at the snapshot's step (syncs; replay only)."""
        from gradoctor.train.environment import restore_rng

        assert self.state is not None
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        s = self.state
        trainer.model.load_state_dict(s["model"])
        trainer.optimizer.load_state_dict(s["optimizer"])
        scaler = trainer.scaler
        if scaler.is_enabled():
            scaler.load_state_dict(s["scaler"])
            if "scaler_scale" in s and scaler._scale is not None:
                scaler._scale.copy_(s["scaler_scale"])
                scaler._growth_tracker.copy_(s["scaler_growth"])
            elif "scaler_scale" not in s:  # snapshot from before the first step: re-init lazily
                scaler._scale, scaler._growth_tracker = None, None
        if trainer.scheduler is not None:
            trainer.scheduler.load_state_dict(s["scheduler"])
        trainer.data.restore(s["data"])
        restore_rng(s["rng"])
        trainer.step_count = self.step
