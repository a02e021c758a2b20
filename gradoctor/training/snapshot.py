"""A one-step snapshot of the run state, for replaying a bad step.

What it holds is ``TrainState.state_dict()`` (the same list as a checkpoint) plus the loss
scaler's live device tensors. On CUDA the model and optimizer tensors are queued on the
current stream (no host sync; stream order guarantees the pre-step values are read) into
buffers allocated once and reused: on the device when it has more than 4x their size free (a
device-to-device copy costs ~1 ms per GB on an H200), else in pinned host memory (a PCIe
copy, which stalls the stream for ~40 ms per GB). Cost: one copy of parameters + optimizer
state every ``snapshot_every`` steps (plus ``GradScaler.state_dict``'s one sync under fp16);
memory: that much device (or pinned host) memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from gradoctor.monitors.memory import optimizer_state_tensors, tensor_bytes
from gradoctor.torch_private import load_scaler_live_state, scaler_live_state
from gradoctor.training.state import TrainState

_BUFFERED = ("model", "optimizer")  # tensors copied into reused buffers
_COPIED = ("scaler", "scheduler")  # live objects deep-copied; the rest are fresh objects


class Snapshot:
    """The latest snapshot: ``step`` (-1 before the first) and ``state``."""

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

    def _choose_target(self, state: TrainState) -> torch.device:
        if not self.cuda:
            return torch.device("cpu")
        need = tensor_bytes(state.model.state_dict().values()) + tensor_bytes(
            optimizer_state_tensors(state.optimizer)
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if free > 4 * need else torch.device("cpu")

    def take(self, state: TrainState) -> None:
        """Record ``state`` at the current step boundary."""
        if self.target is None or (self.step == 0 and self.target.type == "cuda"):
            self.target = self._choose_target(state)  # again after step 1: optimizer state exists
        self.step = state.step
        live = state.state_dict()
        self.state = {
            k: self._copy(v, k) if k in _BUFFERED else copy.deepcopy(v) if k in _COPIED else v
            for k, v in live.items()
        }
        scaler = scaler_live_state(state.scaler)  # lazy (None) before the first step
        self.state["scaler_live"] = (
            {k: self._copy(v, f"scaler/{k}") for k, v in scaler.items()} if scaler else None
        )

    def restore(self, state: TrainState) -> None:
        """Put ``state`` back at the snapshot's step (syncs; replay only)."""
        if self.state is None:
            raise RuntimeError("no snapshot taken")
        if self.cuda:
            torch.cuda.synchronize(self.device)
        state.load_state_dict(self.state)
        load_scaler_live_state(state.scaler, self.state["scaler_live"])
