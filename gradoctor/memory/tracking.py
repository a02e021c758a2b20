"""Track one training step tensor by tensor: every storage created and freed, what autograd
saves for backward, and which module call was running.

Three instruments, all removed when the step ends (nothing is left behind):

* a ``TorchDispatchMode`` that sees every ATen op (forward, backward and optimizer) and records
  each new output storage; a weak reference on the storage records its free;
* ``torch.autograd.graph.saved_tensors_hooks`` whose pack hook marks the storages autograd saves
  (parameters are skipped; storages are deduplicated);
* forward pre/post hooks on every module, giving the module-call stack at each event.

A "storage" is the unit of memory: views and in-place results share their input's storage and
are not new allocations. On CUDA each storage's size is rounded up to the allocator's 512-byte
granularity, and each op's own allocator peak is read around it (``reset_peak_memory_stats`` /
``max_memory_allocated``: host-side counters, no sync), which catches workspaces (cuDNN,
cuBLAS) that no tensor owns. Cost: a few microseconds of Python per op; no device sync.

What the outer hooks see under non-reentrant ``torch.utils.checkpoint`` (verified on torch
2.13): a checkpointed region saves only its inputs (through ``_NoopSaveInputs``); what its ops
save goes to the checkpoint's own hooks, and its recomputation in backward shows up here as new
allocations.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gradoctor.torch_private import TorchDispatchMode

PHASES = ("data", "forward", "backward", "optimizer")
_CUDA_GRANULARITY = 512  # the CUDA caching allocator rounds every block to 512 bytes


def storage_key(t: torch.Tensor) -> int | None:
    """Identity of ``t``'s storage (its C++ StorageImpl pointer); None for storage-less tensors."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


def storage_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t``'s whole storage (not just the view), rounded as the device allocates."""
    return _rounded(t.untyped_storage())


def _rounded(storage: torch.UntypedStorage) -> int:
    n = storage.nbytes()
    if storage.device.type == "cuda":
        n = max(1, -(-n // _CUDA_GRANULARITY)) * _CUDA_GRANULARITY
    return n


def unique_bytes(tensors: Iterable[Any], device_type: str) -> tuple[int, set[int]]:
    """Total storage bytes of the tensors on ``device_type`` (each storage once), and their keys."""
    total, keys = 0, set()
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == device_type:
            key = storage_key(t)
            if key is not None and key not in keys:
                keys.add(key)
                total += storage_bytes(t)
    return total, keys


@dataclass
class StorageRecord:
    """One storage created during the step (``alloc >= 0``) or existing before it (``-1``)."""

    key: int
    nbytes: int
    phase: str  # phase at creation (one of PHASES)
    micro: int  # micro-batch index at creation
    stack: tuple[int, ...]  # module-call ids active at creation, outermost first
    alloc: int  # index of its allocation event; -1 when it existed before the step
    op: str = ""
    free: int | None = None  # index of its free event; None when alive at the end
    saved_by: list[tuple[int, ...]] = field(default_factory=list)  # call stacks of its savers
    param_cast: bool = False  # an autocast copy of a parameter (a "weight copy")
    kind: str = ""  # gradient | optimizer_state | autocast_weight | activation | batch | temporary
    unpacked: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # backward reads:
    #   (events before the read, call stack of the op that saved it)
    released: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # a saver let go:
    #   (events before autograd released its saved copy, call stack of that saver)
    sources: tuple[int, ...] = ()  # records of the tensors the op that made it read
    op_id: int = -1  # the op that made it (outputs of one op share it)


@dataclass
class CallRecord:
    """One call of a module's forward: events ``[enter, exit)`` happened inside it."""

    qname: str
    kind: str  # the module's class name
    micro: int
    phase: str
    parent: int | None
    enter: int
    exit: int = -1
    inputs: list[int] = field(default_factory=list)  # storage-record indices of tensor inputs
    # state objects among its non-tensor inputs (a KV ``Cache``), as ``(micro, id)`` tokens:
    # a checkpoint keeps them, and what they reach, alive until its backward is done
    states: list[tuple[int, int]] = field(default_factory=list)
    # storages created in the call that those objects still reach when it returns: ``(token,
    # record index, bytes the same attribute path held on entry)``; its recomputation runs
    # against the state the forward left, e.g. appends to the cache again
    held: list[tuple[tuple[int, int], int, int]] = field(default_factory=list)


@dataclass
class StepTrace:
    """Everything tracked in one step. ``events[i] = (record index, +1 alloc | -1 free)``."""

    device_type: str
    records: list[StorageRecord]
    events: list[tuple[int, int]]
    event_phase: list[str]
    event_micro: list[int]
    calls: list[CallRecord]
    static: dict[str, int]  # bytes alive before the step: parameters, optimizer_state, ...
    phase_ranges: dict[tuple[str, int], tuple[int, int]]  # (phase, micro) -> [start, end)
    # CUDA: (events before the op, allocator peak during the op minus allocated before it)
    op_spikes: list[tuple[int, int]] = field(default_factory=list)
    # every tensor autograd saved in the step, parameters included: (events before, call stack)
    packs: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    # record -> event position where it would be freed if autograd kept nothing (the same
    # forward run under no_grad; see ``model.natural_frees``); filled by the profiler
    natural_free: dict[int, int] = field(default_factory=dict)

    def live_curve(self) -> list[int]:
        """Bytes alive (static included) after each event; index ``i`` is after event ``i``."""
        total, out = sum(self.static.values()), []
        for idx, sign in self.events:
            total += sign * self.records[idx].nbytes
            out.append(total)
        return out

    def peak(self) -> tuple[int, int]:
        """``(peak bytes, event index)``; the index is -1 when nothing was allocated."""
        curve = self.live_curve()
        if not curve:
            return sum(self.static.values()), -1
        i = max(range(len(curve)), key=curve.__getitem__)
        return max(curve[i], sum(self.static.values())), i

    def alive_at(self, i: int) -> list[StorageRecord]:
        """Records created in the step and alive right after event ``i``."""
        return [r for r in self.records if 0 <= r.alloc <= i and (r.free is None or r.free > i)]


class StepTracker(TorchDispatchMode):
    """Records a :class:`StepTrace`. Use ``with tracker.tracking(): ...`` around the step and set
    ``tracker.phase`` / ``tracker.micro`` at each phase boundary (phase ``"data"`` for the
    host-to-device copy of the batch)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        device: torch.device,
        batch_tensors: Iterable[torch.Tensor] = (),
        params: list[torch.Tensor] | None = None,
        saves: bool = True,
    ):
        super().__init__()
        self.saves = saves  # False: no saved-tensor hooks (only the byte curve is wanted)
        self.device_type = device.type
        self.device = device
        self.cuda = device.type == "cuda"
        self.op_spikes: list[tuple[int, int]] = []
        self.packs: list[tuple[int, tuple[int, ...]]] = []
        self._deferred: list[tuple[weakref.ref, int, str]] | None = None
        self.device_peak = 0  # CUDA: the largest allocator peak of any op since the last read
        self.model = model
        if params is None:  # else: stand-ins (e.g. meta tensors run through functional_call)
            params = list(model.parameters()) + list(model.buffers())
        param_bytes, self.param_keys = unique_bytes(params, self.device_type)
        state = optimizer_tensors(optimizer) if optimizer is not None else []
        state_bytes, state_keys = unique_bytes(state, self.device_type)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_bytes, grad_keys = unique_bytes(grads, self.device_type)
        batch_tensors = list(batch_tensors)
        batch_bytes, batch_keys = unique_bytes(batch_tensors, self.device_type)
        self.static_keys = self.param_keys | state_keys | grad_keys | batch_keys
        self.static = {
            "parameters": param_bytes,
            "optimizer_state": state_bytes,
            "gradients": grad_bytes,
            "batch": batch_bytes,
        }
        # a storage that existed before the step may be freed in it (an optimizer that replaces
        # its state tensors, a buffer reassigned in forward): watched, so the curve drops
        self._static_refs: list[weakref.ref] = []
        for category, group in (
            ("parameters", params),
            ("optimizer_state", state),
            ("gradients", grads),
            ("batch", batch_tensors),
        ):
            self._watch(group, category)
        self.records: list[StorageRecord] = []
        self.events: list[tuple[int, int]] = []
        self.event_phase: list[str] = []
        self.event_micro: list[int] = []
        self.calls: list[CallRecord] = []
        self.stack: list[int] = []
        self.live: dict[int, int] = {}  # storage key -> record index, for tracked live storages
        self._preexisting: dict[int, int] = {}  # saved storages that existed before the step
        self._refs: dict[int, weakref.ref] = {}
        self._active = False
        self.phase = "forward"
        self.micro = 0
        self._phase_ranges: dict[tuple[str, int], tuple[int, int]] = {}
        self._state_objs: dict[int, list[tuple[Any, dict[tuple, int]]]] = {}  # open calls
        self._op_id = 0  # ops dispatched so far
        self._sources: tuple[int, ...] | None = None  # the current op's input records

    def _watch(self, tensors: Iterable[Any], category: str) -> None:
        seen: set[int] = set()
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
                continue
            key = storage_key(t)
            if key is None or key in seen:
                continue
            seen.add(key)
            storage = t.untyped_storage()
            size = _rounded(storage)
            self._static_refs.append(
                weakref.ref(
                    storage,
                    lambda _r, k=key, n=size, c=category: self._static_freed(k, n, c),
                )
            )

    def _static_freed(self, key: int, nbytes: int, category: str) -> None:
        if not self._active:
            return
        self.static_keys.discard(key)  # the address may be reused by a new storage
        self.param_keys.discard(key)
        idx = len(self.records)
        self.records.append(
            StorageRecord(
                key, nbytes, self.phase, self.micro, tuple(self.stack), -1, "static", kind=category
            )
        )
        self.records[idx].free = len(self.events)
        self._event(idx, -1)

    # ---- phases ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def in_phase(self, phase: str, micro: int = 0) -> Iterator[None]:
        self.phase, self.micro = phase, micro
        start = len(self.events)
        try:
            yield
        finally:
            self._phase_ranges[(phase, micro)] = (start, len(self.events))

    # ---- the three instruments ------------------------------------------------------------
    @contextlib.contextmanager
    def tracking(self) -> Iterator[StepTracker]:
        handles = []
        for qname, module in self.model.named_modules():
            handles.append(
                module.register_forward_pre_hook(self._pre_hook(qname), with_kwargs=True)
            )
            handles.append(module.register_forward_hook(self._post_hook, always_call=True))
        self._active = True
        try:
            hooks = (
                torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
                if self.saves
                else contextlib.nullcontext()
            )
            with hooks, self:
                yield self
        finally:
            self._active = False  # frees after the step are not recorded
            for handle in handles:
                handle.remove()
            self._refs.clear()

    def fetch(self, get: Callable[[], Any]) -> Any:
        """``get()`` (the data component's next batch) with recording deferred: afterwards only
        the storages the returned batch owns and ``get`` created are recorded, as created here.
        Left out: a short batch skipped, collation temporaries, and a data set an iterator builds
        when an epoch starts (batches that are views into it do not own it), so steps at two
        batch sizes still pair up event by event."""
        self._deferred = []
        try:
            batch = get()
        finally:
            pending, self._deferred = self._deferred, None
        owned = {
            storage_key(t)
            for t in _tensors(batch)
            if t.device.type == self.device_type
            and t.untyped_storage().nbytes() <= t.numel() * t.element_size()
        }
        self._sources = None
        for ref, key, op in pending:
            storage = ref()
            if storage is not None and key in owned and key not in self.live:
                self._new_storage(storage, key, op, False)
        return batch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if self._deferred is not None:
            out = func(*args, **(kwargs or {}))
            inputs = _keys(_tensors((args, kwargs)))  # views of existing data are not new
            for t in (out,) if isinstance(out, torch.Tensor) else _tensors(out):
                key = storage_key(t) if t.device.type == self.device_type else None
                if key is not None and key not in self.static_keys and key not in inputs:
                    self._deferred.append((weakref.ref(t.untyped_storage()), key, str(func)))
            return out
        if self.cuda:  # the op's own peak, workspaces included (host-side counters)
            position = len(self.events)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        out = func(*args, **(kwargs or {}))
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            self.device_peak = max(self.device_peak, peak)
            self.op_spikes.append((position, peak - before))
        inputs: set[int] | None = None
        self._op_id += 1
        self._sources = None
        outs = (out,) if isinstance(out, torch.Tensor) else _tensors(out)
        for t in outs:
            if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
                continue
            key = storage_key(t)
            if key is None or key in self.live or key in self.static_keys:
                continue
            if inputs is None:
                inputs = _keys(_tensors((args, kwargs)))
            if key in inputs:  # a view or in-place result of an untracked input
                continue
            if self._sources is None:
                found = (self.live.get(k, self._preexisting.get(k)) for k in inputs)
                self._sources = tuple(i for i in found if i is not None)
            self._new(
                t,
                key,
                str(func),
                func is torch.ops.aten._to_copy.default
                and args
                and _key_in(args[0], self.param_keys),
            )
        return out

    def _new(self, t: torch.Tensor, key: int, op: str, param_cast: bool) -> int:
        return self._new_storage(t.untyped_storage(), key, op, param_cast)

    def _new_storage(
        self, storage: torch.UntypedStorage, key: int, op: str, param_cast: bool
    ) -> int:
        idx = len(self.records)
        nbytes = _rounded(storage)
        self.records.append(
            StorageRecord(
                key=key,
                nbytes=nbytes,
                phase=self.phase,
                micro=self.micro,
                stack=tuple(self.stack),
                alloc=len(self.events),
                op=op,
                param_cast=bool(param_cast),
                sources=self._sources or (),
                op_id=self._op_id,
            )
        )
        self.live[key] = idx
        self._event(idx, +1)
        self._refs[idx] = weakref.ref(storage, lambda _r, idx=idx: self._freed(idx))
        return idx

    def _freed(self, idx: int) -> None:
        if not self._active or self._refs.pop(idx, None) is None:
            return
        record = self.records[idx]
        record.free = len(self.events)
        self.live.pop(record.key, None)
        self._event(idx, -1)

    def _event(self, idx: int, sign: int) -> None:
        self.events.append((idx, sign))
        self.event_phase.append(self.phase)
        self.event_micro.append(self.micro)

    def _pack(self, t: torch.Tensor) -> Any:
        if self._active:  # every save counts toward a checkpoint's early stop, parameters too
            self.packs.append((len(self.events), tuple(self.stack)))
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
            return t
        key = storage_key(t)
        if key is None or key in self.param_keys:
            return t
        idx = self.live.get(key)
        if idx is None:
            idx = self._preexisting.get(key)
        if idx is None:  # saved but created before the step (e.g. the batch)
            idx = len(self.records)
            self.records.append(
                StorageRecord(key, storage_bytes(t), "data", self.micro, (), alloc=-1, op="input")
            )
            self._preexisting[key] = idx
        stack = tuple(self.stack)
        if stack not in self.records[idx].saved_by:
            self.records[idx].saved_by.append(stack)
        return _Saved(t, idx, stack, self._released)

    def _released(self, idx: int, stack: tuple[int, ...]) -> None:
        if self._active:
            self.records[idx].released.append((len(self.events), stack))

    def _unpack(self, packed: Any) -> Any:
        """Backward reads a saved tensor: this is when a checkpointed region recomputes."""
        if not isinstance(packed, _Saved):
            return packed
        if self._active:
            self.records[packed.idx].unpacked.append((len(self.events), packed.stack))
        return packed.tensor

    def _pre_hook(self, qname: str):
        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            call = CallRecord(
                qname=qname,
                kind=type(module).__name__,
                micro=self.micro,
                phase=self.phase,
                parent=self.stack[-1] if self.stack else None,
                enter=len(self.events),
            )
            for key in _keys(_tensors((args, kwargs))):
                idx = self.live.get(key, self._preexisting.get(key))
                if idx is not None:
                    call.inputs.append(idx)
            objs = _state_objects((args, kwargs))
            if objs and self.phase == "forward":
                self._state_objs[len(self.calls)] = [
                    (
                        obj,
                        {
                            path: storage_bytes(t)
                            for path, t in _reachable(obj)
                            if t.device.type == self.device_type and storage_key(t) is not None
                        },
                    )
                    for obj in objs
                ]
                call.states = [(self.micro, id(obj)) for obj in objs]
            self.stack.append(len(self.calls))
            self.calls.append(call)

        return hook

    def _post_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            cid = self.stack.pop()
            call = self.calls[cid]
            call.exit = len(self.events)
            for obj, entry in self._state_objs.pop(cid, ()):
                token = (call.micro, id(obj))
                for path, t in _reachable(obj):
                    if t.device.type != self.device_type:
                        continue
                    idx = self.live.get(storage_key(t))
                    if idx is not None and call.enter <= self.records[idx].alloc < call.exit:
                        call.held.append((token, idx, entry.get(path, 0)))

    # ---- after the step -------------------------------------------------------------------
    def keys_of(self, tensors: Iterable[Any]) -> set[int]:
        """Record indices of the live tracked storages among ``tensors``."""
        out = set()
        for key in _keys(tensors):
            if key in self.live:
                out.add(self.live[key])
        return out

    def finish(self, gradients: set[int], optimizer_state: set[int]) -> StepTrace:
        """Classify every record and return the trace. ``gradients`` / ``optimizer_state`` are
        record indices captured right after backward / after ``optimizer.step()``."""
        for i, r in enumerate(self.records):
            if r.op == "static":  # a storage from before the step, freed in it: kept as is
                continue
            if i in gradients:
                r.kind = "gradient"
            elif i in optimizer_state:
                r.kind = "optimizer_state"
            elif r.param_cast:
                r.kind = "autocast_weight"
            elif r.saved_by:
                r.kind = "activation"
            elif r.phase == "data":
                r.kind = "batch"
            else:
                r.kind = "temporary"
        for call in self.calls:
            if call.exit < 0:
                call.exit = len(self.events)
        return StepTrace(
            device_type=self.device_type,
            records=self.records,
            events=self.events,
            event_phase=self.event_phase,
            event_micro=self.event_micro,
            calls=self.calls,
            static=dict(self.static),
            phase_ranges=dict(self._phase_ranges),
            op_spikes=list(self.op_spikes),
            packs=list(self.packs),
        )


class _Saved:
    """What the pack hook hands autograd in place of a saved tensor. It holds the tensor, so
    the storage lives exactly as long as without the hook, and reports when autograd lets go
    of it (its saver's backward is done)."""

    __slots__ = ("tensor", "idx", "stack", "_on_release")

    def __init__(self, tensor: torch.Tensor, idx: int, stack: tuple[int, ...], on_release: Any):
        self.tensor, self.idx, self.stack, self._on_release = tensor, idx, stack, on_release

    def __del__(self) -> None:
        self._on_release(self.idx, self.stack)


def _tensors(obj: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in nested tuples / lists / dicts (an op's arguments or outputs): a few times
    cheaper per op than ``torch.utils._pytree``, which the tracker would pay on every op."""
    if out is None:
        out = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _tensors(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, out)
    return out


_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device)


def _state_objects(inputs: Any) -> list[Any]:
    """The objects among a call's inputs (top level, or in tuples / lists / dicts) that are not
    tensors, containers or plain values: state a module may mutate (a KV ``Cache``)."""
    out: list[Any] = []
    stack = [inputs]
    while stack:
        obj = stack.pop()
        if isinstance(obj, (tuple, list)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif not isinstance(obj, (torch.Tensor, torch.nn.Module, _ATOMS)) and hasattr(
            obj, "__dict__"
        ):
            out.append(obj)
    return out


def _reachable(obj: Any, depth: int = 4, most: int = 512) -> list[tuple[tuple, torch.Tensor]]:
    """``(attribute path, tensor)`` for the tensors ``obj`` reaches through attributes, lists,
    tuples and dicts (``depth`` levels, ``most`` objects; modules are not entered)."""
    out: list[tuple[tuple, torch.Tensor]] = []
    seen: set[int] = set()
    stack: list[tuple[tuple, Any, int]] = [((), obj, 0)]
    while stack and len(seen) < most:
        path, item, level = stack.pop()
        if isinstance(item, torch.Tensor):
            out.append((path, item))
            continue
        if level > depth or id(item) in seen or isinstance(item, (torch.nn.Module, _ATOMS)):
            continue
        seen.add(id(item))
        if isinstance(item, (tuple, list)):
            children = enumerate(item)
        elif isinstance(item, dict):
            children = ((k, v) for k, v in item.items() if isinstance(k, (str, int)))
        elif hasattr(item, "__dict__"):
            children = vars(item).items()
        else:
            continue
        for name, child in children:
            stack.append(((*path, name), child, level + 1))
    return out


def _keys(items: Iterable[Any]) -> set[int]:
    out = set()
    for t in items:
        if isinstance(t, torch.Tensor):
            key = storage_key(t)
            if key is not None:
                out.add(key)
    return out


def _key_in(t: Any, keys: set[int]) -> bool:
    return isinstance(t, torch.Tensor) and storage_key(t) in keys


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    ]
