"""The instrument that records a run's op stream (``stream.OpStream``) from inside the step.

A ``TorchDispatchMode`` entered in the step's ``forward``, ``backward`` and ``optimizer``
contexts sees every aten op there (ops inside custom ``autograd.Function``s, functional
calls, activation-checkpoint recomputation and the optimizer's foreach kernels included). For
each op it keeps, on the device: the digest of each tensor the op wrote (its outputs and the
arguments it mutates in place, after the op) and of each tensor it read that no recorded op
wrote (looked up by tensor identity and version counter, so a tensor's digest is computed
once); for random ops the digest of the generator's state before the op. Host side it keeps
the op, the innermost module, the phase, the output shapes and a CRC of the non-tensor
arguments and input shapes/dtypes. The batch (phase ``data``) and, at the first step, every
parameter and buffer (phase ``init``) are recorded as tensors.

Module attribution: ``monitors.op_scope.ModuleScope`` (forward hooks keep the stack of
modules running; gradient hooks on each module call's outputs and inputs keep the backward's).
Every hook is removed at the end of the step (forward hooks) or of the micro-batch's backward
(gradient hooks).

Cost: per op, two small kernels per digested tensor and the Python of one dispatch; one host
sync per step (``step_end`` copies the step's digests, stacked per device). Values are only
read: the run computes what it computes without the recorder.
"""

from __future__ import annotations

import contextlib
import weakref
import zlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradoctor.errors import GradoctorError
from gradoctor.monitors.instrument import Instrument, StepOutcome, StepView
from gradoctor.monitors.op_scope import ModuleScope, OpWatch, leaves, op_info, tensors
from gradoctor.reproducibility.digest import digestible, tensor_digest
from gradoctor.reproducibility.stream import EXTERNAL, PRODUCED, UNINITIALISED, OpRecord, OpStream

# non-tensor arguments whose repr is their value (a Generator's repr is its address)
_PLAIN = (
    int,
    float,
    bool,
    complex,
    str,
    type(None),
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
)


# ops that may return memory they did not write: a tensor grown in place (its new elements)
_GROWS = frozenset({"aten.resize_.default", "aten.resize_as_.default", "aten.set_.source_Storage"})
# attention kernels whose integer outputs (the dropout RNG's seed and offset, a debug mask)
# are left unwritten when there is no dropout (CUDA flash / memory-efficient paths)
_UNINIT_INTEGER_OUTPUTS = frozenset(
    {
        "aten._scaled_dot_product_flash_attention",
        "aten._scaled_dot_product_efficient_attention",
        "aten._scaled_dot_product_cudnn_attention",
        "aten._flash_attention_forward",
        "aten._efficient_attention_forward",
    }
)


def _recorder_error(func: Any, exc: Exception) -> GradoctorError:
    return GradoctorError(
        f"gradoctor repro's recorder failed at {func}: {type(exc).__name__}: {exc}",
        hint="this is gradoctor's failure, not your code's: please report it with the op",
    )


def _combine(crc: int, digests: list[int]) -> int:
    """A view's digest from its base's digest(s) and its arguments (host-side, at the flush):
    a view's values are a function of its input's, so no kernel is needed."""
    h = crc
    for d in digests:
        h = (h * 0x100000001B3 + (d & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h


def _generator_state(kwargs: dict[str, Any], out_device: torch.device) -> Any:
    """The state of the generator a random op draws from (a CPU uint8 tensor), or None."""
    gen = kwargs.get("generator")
    if gen is None:
        if out_device.type == "cuda":
            gen = torch.cuda.default_generators[out_device.index or 0]
        elif out_device.type == "cpu":
            gen = torch.default_generator
        else:
            return None
    return gen.get_state()


class OpDigestRecorder(Instrument):
    """Records ``stream`` (an ``OpStream``) over the steps it takes part in.

    ``capture``: ``(step, index within the step)`` of one record whose written tensors are
    kept (as float64 CPU copies, in ``captured``) to measure the size of a difference."""

    name = "op digests"

    def __init__(self, model: nn.Module, capture: tuple[int, int] | None = None):
        self.model = model
        self.scope = ModuleScope(model)
        self.owner = {id(p): n.rpartition(".")[0] or "(root)" for n, p in model.named_parameters()}
        self.stream = OpStream()
        self.capture = capture
        self.captured: list[torch.Tensor] | None = None
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._virtual: list[tuple[int, int, tuple[int, ...]]] = []  # (slot, crc, input slots)
        self._cache: dict[int, tuple[Any, int, int]] = {}  # id -> (weakref, version, slot)
        self._uninit: set[int] = set()  # storage pointers an empty-family op returned this step
        self._phase = ""
        self._step = 0
        self._in_step = 0

    # ---- slots ----------------------------------------------------------------------------
    def _slot(self, t: torch.Tensor, kind: int) -> int:
        slot = len(self.stream.kinds)
        self.stream.kinds.append(kind)
        self._pending.append((slot, tensor_digest(t)))
        self._remember(t, slot)
        return slot

    def _remember(self, t: torch.Tensor, slot: int) -> None:
        """Cache ``t``'s slot by identity and version (inference tensors have no version
        counter: never cached, so always read afresh)."""
        if not t.is_inference():
            self._cache[id(t)] = (weakref.ref(t), t._version, slot)

    def _view_slot(self, t: torch.Tensor, crc: int, in_slots: tuple[int, ...]) -> int:
        slot = len(self.stream.kinds)
        kinds = self.stream.kinds
        kinds.append(
            UNINITIALISED if any(kinds[i] == UNINITIALISED for i in in_slots) else PRODUCED
        )
        self._virtual.append((slot, crc, in_slots))
        self._remember(t, slot)
        return slot

    def _read(self, t: torch.Tensor) -> int:
        hit = self._cache.get(id(t))
        if hit is not None and hit[0]() is t and not t.is_inference() and hit[1] == t._version:
            return hit[2]
        kind = UNINITIALISED if t.untyped_storage().data_ptr() in self._uninit else EXTERNAL
        return self._slot(t, kind)

    def _append(self, record: OpRecord, written: list[torch.Tensor]) -> None:
        if self.capture == (record.step, self._in_step):
            self.captured = [
                w.detach().to("cpu", torch.float64 if not w.is_complex() else torch.complex128)
                for w in written
            ]
        self._in_step += 1
        self.stream.records.append(record)

    def _optimizer_module(self, tensors: list[torch.Tensor]) -> str:
        owners = {self.owner.get(id(t)) for t in tensors} - {None}
        return owners.pop() if len(owners) == 1 else "(optimizer)"  # type: ignore[return-value]

    # ---- the op ----------------------------------------------------------------------------
    def _op(self, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The recorder's own failures are reported as such, never as the user's code's."""
        try:
            before = self._before(func, args, kwargs)
        except Exception as exc:
            raise _recorder_error(func, exc) from exc
        out = func(*args, **kwargs)  # the user's op: its errors are the user's
        try:
            self._after(func, args, kwargs, out, *before)
        except Exception as exc:
            raise _recorder_error(func, exc) from exc
        return out

    def _before(self, func: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        info = op_info(func)
        flat = leaves((args, kwargs), [])
        ins = [t for t in flat if isinstance(t, torch.Tensor) and digestible(t)]
        in_slots = tuple(self._read(t) for t in ins)
        signature = [
            repr(x) if isinstance(x, _PLAIN) else type(x).__name__
            for x in flat
            if not isinstance(x, torch.Tensor)
        ]
        signature += [f"{tuple(t.shape)}{t.dtype}" for t in ins]
        crc = zlib.crc32("|".join(signature).encode())
        rng_state = None
        if info.random:
            device = ins[0].device if ins else kwargs.get("device") or torch.device("cpu")
            rng_state = _generator_state(kwargs, torch.device(device))
        return info, ins, in_slots, crc, rng_state

    def _after(
        self,
        func: Any,
        args: tuple,
        kwargs: dict[str, Any],
        out: Any,
        info: Any,
        ins: list[torch.Tensor],
        in_slots: tuple[int, ...],
        crc: int,
        rng_state: Any,
    ) -> None:
        written = info.written(out, args, kwargs)
        if info.view:  # an alias of its input: digested from it, host-side, at the flush
            out_slots = tuple(self._view_slot(t, crc + i, in_slots) for i, t in enumerate(written))
        elif info.empty or info.name in _GROWS:
            self._uninit.update(t.untyped_storage().data_ptr() for t in written)
            out_slots = tuple(self._slot(t, UNINITIALISED) for t in written)
        elif info.short in _UNINIT_INTEGER_OUTPUTS:  # e.g. attention's unused RNG seed/offset
            out_slots = tuple(
                self._slot(t, PRODUCED if t.is_floating_point() else UNINITIALISED) for t in written
            )
        else:
            out_slots = tuple(self._slot(t, PRODUCED) for t in written)
        rng_slot = self._slot(rng_state, PRODUCED) if rng_state is not None else -1
        if self._phase == "optimizer":
            module = self._optimizer_module(written or ins)
        else:
            module = self.scope.current()
        self._append(
            OpRecord(
                self._step,
                self._phase,
                module,
                info.name,
                in_slots,
                out_slots,
                tuple(tuple(t.shape) for t in written),
                crc,
                rng_slot,
            ),
            written,
        )

    def _record_tensor(self, phase: str, module: str, op: str, t: torch.Tensor) -> None:
        slot = self._slot(t, PRODUCED)
        crc = zlib.crc32(f"{tuple(t.shape)}{t.dtype}".encode())
        self._append(
            OpRecord(self._step, phase, module, op, (), (slot,), (tuple(t.shape),), crc), [t]
        )

    # ---- the instrument's hooks -------------------------------------------------------------
    def step_start(self, view: StepView) -> None:
        self._step, self._in_step = view.step, 0
        self._uninit.clear()
        if not self.stream.records:
            self._phase = "init"
            for n, p in self.model.named_parameters():
                self._record_tensor("init", n.rpartition(".")[0] or "(root)", f"parameter {n}", p)
            for n, b in self.model.named_buffers():
                if digestible(b):
                    self._record_tensor("init", n.rpartition(".")[0] or "(root)", f"buffer {n}", b)
        self.scope.attach()

    @contextlib.contextmanager
    def _recording(self, phase: str) -> Iterator[None]:
        self._phase = phase
        try:
            with OpWatch(self._op):
                yield
        finally:
            self._phase = ""

    @contextlib.contextmanager
    def forward(self, view: StepView) -> Iterator[None]:
        self._phase = "data"
        for i, t in enumerate(tensors(view.batch)):
            self._record_tensor("data", "(data)", f"batch tensor {i}", t)
        self.scope.begin_forward()
        with self._recording("forward"):
            yield

    @contextlib.contextmanager
    def backward(self, view: StepView) -> Iterator[None]:
        self.scope.begin_backward()
        try:
            with self._recording("backward"):
                yield
        finally:
            self.scope.end_backward()

    @contextlib.contextmanager
    def optimizer(self, view: StepView) -> Iterator[None]:
        self.scope.phase = "optimizer"
        with self._recording("optimizer"):
            yield

    def step_end(self, view: StepView, outcome: StepOutcome) -> None:
        self.close()
        self._flush()

    def close(self) -> None:
        """Remove every hook this recorder holds (also done at each step end)."""
        self.scope.detach()

    def _flush(self) -> None:
        """The step's one host copy: every pending digest, stacked per device."""
        digests = self.stream.digests
        digests.extend([0] * (len(self.stream.kinds) - len(digests)))
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for slot, d in self._pending:
            by_device.setdefault(d.device, []).append((slot, d))
        for pairs in by_device.values():
            values = torch.stack([d for _, d in pairs]).cpu().tolist()
            for (slot, _), v in zip(pairs, values):
                digests[slot] = v
        for slot, crc, ins in self._virtual:
            digests[slot] = _combine(crc, [digests[i] for i in ins])
        self._pending.clear()
        self._virtual.clear()
        # a tensor no recorded op wrote may change without a version bump (a NumPy array it
        # shares, a write through .data): read it afresh at the next step
        kinds = self.stream.kinds
        self._cache = {
            k: v for k, v in self._cache.items() if v[0]() is not None and kinds[v[2]] == PRODUCED
        }


__all__ = ["OpDigestRecorder"]
