"""Memory: CUDA allocator peaks per phase, or a documented substitute on CPU.

CUDA: on sampled steps the allocator's peak is reset at each phase boundary (forward,
backward, optimizer) and read back after it — host-side allocator counters, no device sync.
CPU has no peak API, so gradoctor reports what it can count exactly: bytes saved for backward
(``saved_tensors_hooks`` on sampled steps, deduplicated by storage, parameters excluded),
parameter / gradient / optimizer-state bytes, and the process's peak RSS.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from typing import Any

import torch

from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.monitors.interval import Interval
from gradoctor.torch_private import local_tensor

PHASES = ("forward", "backward", "optimizer")
_NULL = contextlib.nullcontext()


def tensor_bytes(tensors: Any) -> int:
    total, seen = 0, set()
    for t in tensors:
        t = local_tensor(t) if isinstance(t, torch.Tensor) else t  # FSDP: this rank's shard
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


class MemoryMonitor:
    def __init__(self, device: torch.device, params: list[torch.nn.Parameter]):
        self.device = device
        self.cuda = device.type == "cuda"
        self.params = params
        self._param_ptrs = {local_tensor(p).untyped_storage().data_ptr() for p in params}
        self._param_bytes = tensor_bytes(params)
        self._device_total = (
            torch.cuda.get_device_properties(device).total_memory if self.cuda else None
        )
        self.peaks: dict[str, int] = {}
        self.saved_for_backward = 0
        self.optimizer_state = 0
        self.grads = 0
        self._saved_step = 0
        self.updated = False  # set by a sampled step; the loop clears it once it wrote memory/*

    def phase(self, name: str, sampled: bool) -> contextlib.AbstractContextManager[None]:
        """Peak allocated bytes during the phase (CUDA, sampled steps only; else free)."""
        return self._phase(name) if sampled and self.cuda else _NULL

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        peak = torch.cuda.max_memory_allocated(self.device)
        self.peaks[name] = max(self.peaks.get(name, 0), peak)

    @contextlib.contextmanager
    def saved_tensors(self, sampled: bool) -> Iterator[None]:
        """Count bytes saved for backward in this forward (sampled steps only)."""
        if not sampled:
            yield
            return

        seen: set[int] = set()
        count = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self._param_ptrs and ptr not in seen:
                seen.add(ptr)
                count[0] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        # Per micro-batch: storages freed by one backward may be reused by the next forward.
        self._saved_step = max(self._saved_step, count[0])

    def end_sampled_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Close a sampled step: keep the max saved bytes, refresh static sizes (host metadata only)."""
        self.updated = True
        self.saved_for_backward = max(self.saved_for_backward, self._saved_step)
        self._saved_step = 0
        self.optimizer_state = tensor_bytes(optimizer_state_tensors(optimizer))
        self.grads = max(
            self.grads, tensor_bytes(p.grad for p in self.params if p.grad is not None)
        )

    def summary(self) -> dict[str, Any]:
        """The report's ``memory`` block (bytes)."""
        out: dict[str, Any] = {
            "device": self.device.type,
            "method": "cuda_allocator" if self.cuda else "tracked_tensors",
            "forward_peak": self.peaks.get("forward"),
            "backward_peak": self.peaks.get("backward"),
            "optimizer_peak": self.peaks.get("optimizer"),
            "device_total": self._device_total,
            "params": self._param_bytes,
            "grads": self.grads,
            "optimizer_state": self.optimizer_state,
            "saved_for_backward": self.saved_for_backward,
            "rss_peak": rss_peak(),
        }
        return out


def rss_peak() -> int:
    """The process's peak resident set size (bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MemoryInstrument(Instrument):
    """The memory monitor as an instrument: phase peaks (CUDA), saved-for-backward bytes and
    static sizes on the run's first two steps and every ``memory_every`` steps; its values
    join the interval's last TensorBoard event after a measured step."""

    name = "memory"

    def __init__(self, monitor: MemoryMonitor, every: int, start_step: int):
        self.monitor, self.every, self.start_step = monitor, every, start_step

    def active(self, step: int) -> bool:
        """Steps 1 and 2 of the run (optimizer state appears at the first) and every
        ``memory_every``: peaks are steady after that."""
        return step - self.start_step <= 2 or (self.every > 0 and step % self.every == 0)

    @contextlib.contextmanager
    def _forward(self) -> Iterator[None]:
        with self.monitor.phase("forward", True), self.monitor.saved_tensors(True):
            yield

    def forward(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self._forward()

    def backward(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self.monitor.phase("backward", True)

    def optimizer(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self.monitor.phase("optimizer", True)

    def after_update(self, view: StepView) -> None:
        self.monitor.end_sampled_step(view.optimizer)

    def flush(self, interval: Interval) -> None:
        if self.monitor.updated:
            self.monitor.updated = False
            interval.last_scalars.update(
                {
                    f"memory/{k}": v
                    for k, v in self.monitor.summary().items()
                    if isinstance(v, int) and k != "device_total"
                }
            )
