"""A one-step snapshot for replaying a bad step: weights, optimizer, scaler, scheduler, RNG, data.

On CUDA the copies are queued on the current stream (no host sync; stream order guarantees
the pre-step values are read) into buffers allocated once and reused: on the device when it
has more than 4x their size free (a device-to-device copy costs ~1 ms per GB on an H200),
else in pinned host memory (a PCIe copy, which stalls the stream for ~40 ms per GB). Cost:
one copy of parameters + optimizer state every ``snapshot_every`` steps; memory: that much
device (or pinned host) memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from gradoctor.training.environment import capture_rng


class Snapshot:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.target: torch.device | None = None  # where the buffers live, chosen at the first take
        self._buffers: dict[str, torch.Tensor] = {}
        self.state: dict[str, Any] | None = None
        self.step = -1

    def _copy(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            buf = self._buffers.get(key)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                on_host = not obj.is_cuda or self.target is None or self.target.type == "cpu"
                buf = torch.empty(
                    obj.shape,
                    dtype=obj.dtype,
                    device="cpu" if on_host else obj.device,
                    pin_memory=on_host and obj.is_cuda,
                )
                self._buffers[key] = buf
            buf.copy_(obj.detach(), non_blocking=True)
            return buf
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, f"{key}/{i}") for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _choose_target(self, trainer: Any) -> torch.device:
        if not self.cuda:
            return torch.device("cpu")
        from gradoctor.monitors.memory import optimizer_state_tensors, tensor_bytes

        need = tensor_bytes(trainer.model.state_dict().values()) + tensor_bytes(
            optimizer_state_tensors(trainer.optimizer)
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if free > 4 * need else torch.device("cpu")

    def take(self, trainer: Any) -> None:
        """Record the trainer's state at the current step boundary."""
        if self.target is None or (self.step == 0 and self.target.type == "cuda"):
            self.target = self._choose_target(trainer)  # again after step 1: optimizer state exists
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
        from gradoctor.training.environment import restore_rng

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
