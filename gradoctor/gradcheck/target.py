"""A case bound to one dtype and device: the function the checks differentiate.

``Target`` converts copies of the inputs and of a module's parameters to the dtype, names
every differentiable tensor (a *slot*: a floating-point input or a parameter) and calls the
case on replacement values for those slots. ``FlatFunction`` views the call as a map
``R^N -> R^M`` between flat float vectors (slots concatenated; floating outputs
concatenated), which is what the finite-difference code works with.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradoctor.gradcheck.case import Case, callable_of
from gradoctor.torch_private import pytree, set_grad_enabled_raw, slot_tables

_BATCH_MIXING = (torch.nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class Slot:
    """One differentiable tensor: an input (``position`` in args) or a module parameter."""

    name: str
    kind: str  # "input" | "param"
    position: int | str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _input_names(fn: Any, n: int) -> list[str]:
    target = fn
    if isinstance(fn, type) and issubclass(fn, torch.autograd.Function):
        target, skip = fn.forward, 1
    elif isinstance(fn, torch.nn.Module):
        target, skip = fn.forward, 0
    else:
        skip = 0
    names: list[str] = []
    try:
        params = list(inspect.signature(target).parameters.values())[skip:]
        for p in params:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                break
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(p.name)
    except (TypeError, ValueError):
        pass
    return [names[i] if i < len(names) else f"input[{i}]" for i in range(n)]


def _convert(x: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if is_float_tensor(x):
        return x.detach().to(device=device, dtype=dtype).clone()
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device).clone()
    return x


_NO_CONTEXT = contextlib.nullcontext()


def manual_seed(seed: int) -> None:
    """``torch.manual_seed``, minus its cost where no accelerator exists: with none, seeding
    the other device kinds only queues callbacks (each recording a stack trace) that can
    never run, so seeding the CPU generator is the same."""
    if _accelerator_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not hasattr(accelerator, "is_available"):
        return True  # older torch: take the full path
    return bool(accelerator.is_available())


def _flatten_outputs(out: Any) -> tuple[list[torch.Tensor], list[str]]:
    if isinstance(out, torch.Tensor):  # the common case, without pytree's cost
        return ([out], ["out"]) if out.is_floating_point() else ([], [])
    leaves, spec = pytree.tree_flatten(out)
    paths = [p for p, _ in pytree.tree_flatten_with_path(out)[0]]
    tensors, names = [], []
    for path, leaf in zip(paths, leaves):
        if is_float_tensor(leaf):
            tensors.append(leaf)
            names.append("out" + pytree.keystr(path) if path else "out")
    return tensors, names


@dataclass
class _ModuleCopy:
    module: torch.nn.Module
    owners: dict[str, list[tuple[torch.nn.Module, str]]]
    buffers: dict[str, torch.Tensor]  # as copied: each call loads fresh clones of these
    params: list[tuple[str, torch.Tensor]]  # floating parameters as copied, never loaded


class ModuleCopies:
    """The private copies of one case's module, one per (dtype, device), shared by the
    Targets of a run (the reference and its resized, scaled, low-precision siblings).

    Every call loads its own parameter values and fresh buffer clones into the copy, so the
    Targets sharing it do not see each other's values; what they share is the deep copy
    (the dominant cost of building a Target) and the input names read from the signature.
    """

    def __init__(self, case: Case):
        self.case = case
        self._copies: dict[tuple[torch.dtype, torch.device], _ModuleCopy] = {}
        self._names: dict[int, list[str]] = {}

    def module(self, dtype: torch.dtype, device: torch.device) -> _ModuleCopy:
        key = (dtype, device)
        if key not in self._copies:
            module = copy.deepcopy(self.case.fn).to(device=device, dtype=dtype)
            self._copies[key] = _ModuleCopy(
                module,
                _owners(module),
                {k: b.detach() for k, b in module.named_buffers()},
                [(n, p.detach().clone()) for n, p in module.named_parameters()],
            )
        return self._copies[key]

    def input_names(self, n: int) -> list[str]:
        if n not in self._names:
            self._names[n] = _input_names(self.case.fn, n)
        return self._names[n]


class Target:
    """``case`` in ``dtype`` on ``device``; ``inputs`` replaces the case's example inputs.

    Cost: one deep copy of a module per Target, unless ``copies`` (another Target's
    ``.copies``) already holds one in this dtype and device; each call is one forward.
    """

    def __init__(
        self,
        case: Case,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        inputs: Sequence[Any] | None = None,
        seed: int = 0,
        random: bool = False,
        batch_positions: list[int] | None = None,
        copies: ModuleCopies | None = None,
    ):
        self.case, self.dtype, self.device = case, dtype, torch.device(device)
        if copies is not None and copies.case is not case:
            raise ValueError("copies belong to another case")
        self.copies = copies if copies is not None else ModuleCopies(case)
        self._batch_positions = batch_positions
        self.seed, self.random = seed, random
        raw = tuple(case.inputs if inputs is None else inputs)
        self.args = [_convert(a, dtype, self.device) for a in raw]
        self.kwargs = {k: _convert(v, dtype, self.device) for k, v in case.kwargs.items()}
        self.module: torch.nn.Module | None = None
        shared = None
        if isinstance(case.fn, torch.nn.Module):
            shared = self.copies.module(dtype, self.device)
            self.module = shared.module
        self.call_fn = callable_of(case.fn)
        names = self.copies.input_names(len(self.args))
        self.slots: list[Slot] = []
        self.values: list[torch.Tensor] = []
        for i, a in enumerate(self.args):
            if is_float_tensor(a):
                self.slots.append(Slot(names[i], "input", i, tuple(a.shape)))
                self.values.append(a)
        self.buffers: dict[str, torch.Tensor] = {}
        if shared is not None:
            for name, p in shared.params:
                if p.is_floating_point():
                    self.slots.append(Slot(name, "param", name, tuple(p.shape)))
                    self.values.append(p.clone())
            self.buffers = shared.buffers
            self._owners = shared.owners
        self.n_inputs = sum(s.kind == "input" for s in self.slots)
        self.output_names: list[str] = []
        self.output_shapes: list[tuple[int, ...]] = []

    # -- calling -----------------------------------------------------------------------
    def rng(self) -> contextlib.AbstractContextManager[None]:
        """Forks and reseeds the RNG when the case is random, so every call draws the same."""
        return self._replay() if self.random else _NO_CONTEXT

    @contextlib.contextmanager
    def _replay(self) -> Iterator[None]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            manual_seed(self.seed)
            yield

    @contextlib.contextmanager
    def reference_dtype(self) -> Iterator[None]:
        """The target's dtype as torch's default while inside (float64 targets only), so
        tensors the user's code creates follow it; ``call`` does the same per call."""
        old = torch.get_default_dtype()
        if self.dtype is not torch.float64 or old is self.dtype:
            yield
            return
        torch.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(old)

    def call(
        self,
        values: Sequence[torch.Tensor],
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        surrogate: bool = False,
    ) -> list[torch.Tensor]:
        """Run the case with ``values`` in the slots; returns its floating outputs, flattened.

        ``prepare`` is applied to each input slot's tensor before the call (e.g. to make it
        non-contiguous). With ``surrogate``, the case's declared surrogate is called instead
        of its forward (a Module's surrogate gets the loaded module copy first). The caller
        decides grad mode and RNG context.
        """
        args = list(self.args)
        for slot, v in zip(self.slots, values):
            if slot.kind == "input":
                args[slot.position] = prepare(v) if prepare else v
        # Tensors the user's code creates follow the reference dtype (float64 runs only).
        old = torch.get_default_dtype()
        switch = self.dtype is torch.float64 and old is not self.dtype
        if switch:
            torch.set_default_dtype(self.dtype)
        try:
            if self.module is not None:
                self._load(values)
                if surrogate:
                    out = self.case.surrogate(self.module, *args, **self.kwargs)
                else:
                    out = self.module(*args, **self.kwargs)
            elif surrogate:
                out = self.case.surrogate(*args, **self.kwargs)
            else:
                out = self.call_fn(*args, **self.kwargs)
        finally:
            if switch:
                torch.set_default_dtype(old)
        tensors, names = _flatten_outputs(out)
        if not self.output_names and not surrogate:
            self.output_names = names
            self.output_shapes = [tuple(t.shape) for t in tensors]
        return tensors

    def _load(self, values: Sequence[torch.Tensor]) -> None:
        """Put ``values`` in the private module copy's parameter slots (every owner of a tied
        parameter), and fresh copies of the buffers (a train-mode BatchNorm updates its
        running stats in place). Cheaper than torch.func.functional_call per call."""
        for slot, v in zip(self.slots, values):
            if slot.kind == "param":
                for mod, attr in self._owners[slot.position]:
                    slot_tables(mod)[0][attr] = v
        for name, b in self.buffers.items():
            for mod, attr in self._owners.get(name, ()):
                slot_tables(mod)[1][attr] = b.clone()

    # -- facts about the case ----------------------------------------------------------
    def batch_mixing_layer(self) -> str | None:
        """Name of a known batch-mixing layer in training mode inside the module, if any."""
        if self.module is None:
            return None
        for name, m in self.module.named_modules():
            if isinstance(m, _BATCH_MIXING) and m.training:
                return f"{name or 'module'} ({type(m).__name__}, train mode)"
        return None

    def batch_size(self) -> int | None:
        """Size of dim 0 of the first floating input with a dim (None: not batched)."""
        if not self.case.batched:
            return None
        for slot in self.slots:
            if slot.kind == "input" and len(slot.shape) >= 1:
                return slot.shape[0]
        return None

    def batched_positions(self) -> list[int]:
        """Positions of the tensor inputs whose dim 0 is the batch (decided on the example
        inputs and kept for resized ones, so a weight whose dim 0 happens to equal the new
        batch size is not mistaken for a batched input)."""
        b = self.batch_size()
        if b is None:
            return []
        if self._batch_positions is not None:
            return list(self._batch_positions)
        return [
            i
            for i, a in enumerate(self.args)
            if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == b
        ]


class FlatFunction:
    """A Target seen as ``x (N,) -> y (M,)`` over a subset of its slots.

    ``use`` selects the slots that vary (the others stay at their base values and do not
    require grad); ``prepare`` transforms input tensors before the call; ``grad_layout``
    transforms each cotangent before backward (e.g. to make ``grad_output`` non-contiguous).
    ``value`` costs one forward; ``vjp`` one forward and one backward; ``vjps`` one forward
    and ``len(vs)`` backwards.
    """

    def __init__(
        self,
        target: Target,
        *,
        use: Sequence[int] | None = None,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        grad_layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        base: Sequence[torch.Tensor] | None = None,
    ):
        self.target = target
        self.base = list(base if base is not None else target.values)
        self.use = list(range(len(target.slots))) if use is None else list(use)
        self.slots = [target.slots[i] for i in self.use]
        self.sizes = [s.numel for s in self.slots]
        self._shapes = [s.shape for s in self.slots]
        self.n = sum(self.sizes)
        self.prepare, self.grad_layout = prepare, grad_layout
        # Finite differences (``value``, ``sweep``) of the declared surrogate, when there is
        # one; the analytic side (``vjp``) is always the case's own backward.
        self.surrogate = target.case.surrogate is not None
        self.x0 = self.flatten([self.base[i] for i in self.use])
        # Outputs that do not require grad (marked non-differentiable, integer-valued
        # statistics) are left out, as torch.autograd.gradcheck does, unless none requires
        # grad: then the forward lost the graph and every output is compared.
        with torch.enable_grad(), target.rng():
            y = target.call(self.values_at(self.x0, requires_grad=True), prepare)
        keep = [t.requires_grad for t in y]
        self.keep = keep if any(keep) else [True] * len(y)
        y = self._kept(y)
        self.y0 = torch.cat([t.detach().reshape(-1) for t in y]).to(torch.float64) if y else None
        self.out_shapes = [tuple(t.shape) for t in y]
        self.out_names = [n for n, k in zip(target.output_names, self.keep) if k]
        self.m = 0 if self.y0 is None else self.y0.numel()
        # Rounding unit of the least precise output: differences of float32 outputs carry
        # float32 noise, whatever the reference dtype.
        self.out_eps = max((torch.finfo(t.dtype).eps for t in y), default=0.0)

    def _kept(self, outs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t, k in zip(outs, self.keep) if k]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if not tensors:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])

    def values_at(self, x: torch.Tensor, requires_grad: bool = False) -> list[torch.Tensor]:
        vals = list(self.base)
        dtype, device = self.target.dtype, self.target.device
        same = dtype is torch.float64 and device.type == "cpu"
        chunks = x.detach().split_with_sizes(self.sizes)
        for i, chunk, shape in zip(self.use, chunks, self._shapes):
            t = chunk.view(shape)
            if not same:
                t = t.to(device=device, dtype=dtype)
            # Chunks of the detached x do not require grad: detach only to make leaves.
            vals[i] = t.detach().requires_grad_(True) if requires_grad else t
        return vals

    def _flat_out(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        if not outs:
            return torch.zeros(0, dtype=torch.float64)
        if len(outs) == 1:  # one output: a single copy, without cat
            t = outs[0].detach().reshape(-1)
            if t.dtype is torch.float64 and t.device.type == "cpu":
                return t.clone()
            return t.to(device="cpu", dtype=torch.float64)
        return torch.cat(
            [t.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for t in outs]
        )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), flattened to float64 (M,). One forward."""
        prev = torch.is_grad_enabled()
        set_grad_enabled_raw(False)  # torch.no_grad, minus the context object
        try:
            with self.target.rng():
                outs = self.target.call(self.values_at(x), self.prepare, self.surrogate)
                return self._flat_out(self._kept(outs))
        finally:
            set_grad_enabled_raw(prev)

    @contextlib.contextmanager
    def sweep(self, buf: torch.Tensor) -> Iterator[Callable[[], torch.Tensor]]:
        """Yields ``value`` at whatever ``buf`` (a float64 CPU (N,) vector) holds when called.

        For the many forwards of a finite-difference sweep that edits ``buf`` in place: the
        slot views into ``buf`` are made once (each call passes fresh aliases of them, as
        ``value`` does) and the reference dtype stays the default for the whole sweep
        (no user code runs between the calls). Each call still runs under no_grad and
        the RNG replay, and returns a copy, never a view of ``buf``.
        """
        target, prepare, surrogate = self.target, self.prepare, self.surrogate
        if not (target.dtype is torch.float64 and target.device.type == "cpu"):
            yield lambda: self.value(buf)
            return
        views = self.values_at(buf)
        used = set(self.use)
        fresh = [i in used for i in range(len(views))]
        set_grad = set_grad_enabled_raw

        def ev() -> torch.Tensor:
            vals = [v.detach() if f else v for v, f in zip(views, fresh)]
            prev = torch.is_grad_enabled()
            set_grad(False)
            try:
                with target.rng():
                    return self._flat_out(self._kept(target.call(vals, prepare, surrogate)))
            finally:
                set_grad(prev)

        with target.reference_dtype():
            yield ev

    def _cotangents(self, outs: Sequence[torch.Tensor], v: torch.Tensor) -> list[torch.Tensor]:
        chunks = torch.split(v, [t.numel() for t in outs])
        cots = []
        for t, c in zip(outs, chunks):
            # A fresh copy each time: the engine may reuse a grad_output buffer in place.
            c = c.reshape(t.shape).to(device=t.device, dtype=t.dtype, copy=True)
            cots.append(self.grad_layout(c) if self.grad_layout else c)
        return cots

    def _grads(
        self,
        outs: Sequence[torch.Tensor],
        leaves: Sequence[torch.Tensor],
        v: torch.Tensor,
        *,
        retain: bool,
        create_graph: bool = False,
    ) -> list[torch.Tensor]:
        pairs = [(o, c) for o, c in zip(outs, self._cotangents(outs, v)) if o.requires_grad]
        if not pairs:
            return [torch.zeros_like(leaf) for leaf in leaves]
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            list(leaves),
            [c for _, c in pairs],
            retain_graph=retain or create_graph,
            create_graph=create_graph,
            allow_unused=True,
        )
        return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J(x)^T v, flattened to float64 (N,). One forward and one backward."""
        return self.vjps(x, [v])[0]

    def vjps(self, x: torch.Tensor, vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """J(x)^T v for each v in ``vs``, sharing one forward (the graph is retained)."""
        results = []
        with torch.enable_grad(), self.target.rng():
            vals = self.values_at(x, requires_grad=True)
            outs = self._kept(self.target.call(vals, self.prepare))
            leaves = [vals[i] for i in self.use]
            for k, v in enumerate(vs):
                grads = self._grads(outs, leaves, v, retain=k < len(vs) - 1)
                results.append(self.flatten(grads))
        return results

    # -- naming ------------------------------------------------------------------------
    def locate_input(self, j: int) -> tuple[str, tuple[int, ...]]:
        """Flat input index -> (slot name, element index)."""
        for slot, size in zip(self.slots, self.sizes):
            if j < size:
                return _slot_label(slot), _unravel(j, slot.shape)
            j -= size
        raise IndexError(j)

    def slot_of(self, j: int) -> int:
        for k, size in enumerate(self.sizes):
            if j < size:
                return k
            j -= size
        raise IndexError(j)

    def locate_output(self, i: int) -> tuple[str, tuple[int, ...]]:
        for name, shape in zip(self.out_names, self.out_shapes):
            n = 1
            for s in shape:
                n *= s
            if i < n:
                return name, _unravel(i, shape)
            i -= n
        raise IndexError(i)


def _owners(module: torch.nn.Module) -> dict[str, list[tuple[torch.nn.Module, str]]]:
    """Canonical parameter/buffer name -> every (submodule, attribute) holding that tensor."""
    canonical = {id(p): n for n, p in module.named_parameters()}
    canonical.update({id(b): n for n, b in module.named_buffers()})
    owners: dict[str, list[tuple[torch.nn.Module, str]]] = {}
    for mod in module.modules():
        for table in slot_tables(mod):
            for attr, t in table.items():
                if t is not None and id(t) in canonical:
                    owners.setdefault(canonical[id(t)], []).append((mod, attr))
    return owners


def _slot_label(slot: Slot) -> str:
    return slot.name if slot.kind == "input" else f"param {slot.name}"


def _unravel(j: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(j % s)
        j //= s
    return tuple(reversed(idx))


def slot_label(slot: Slot) -> str:
    """How reports name a slot: the input's name, or ``param <name>``."""
    return _slot_label(slot)
