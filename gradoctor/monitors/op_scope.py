"""Watching a step's aten ops with the module that runs each: the seam that ``repro``'s
recorder and ``audit``'s pattern detector share.

- ``OpWatch(handler)``: a ``TorchDispatchMode`` that hands every aten op to ``handler(func,
  args, kwargs) -> result`` (which must call ``func`` itself). It sees ops inside custom
  ``autograd.Function``s, functional calls, activation-checkpoint recomputation and the
  optimizer's kernels; inside the handler the mode is off, so its own ops are not seen.
- ``ModuleScope(model)``: the qualified name of the innermost module running an op, in the
  forward (module pre/post hooks keep a stack) and in the backward (a hook on each module
  call's outputs — any gradient arrived: its backward begins — and on its inputs — all
  arrived: it ends — keep a second stack; an input returned as is, as by ``Dropout(0)``,
  opens no backward). ``(root)`` is the model itself; ``(outside)`` an op of the forward phase
  before the model ran, ``(loss)`` one after it (the loss) or in the backward before any
  module's. Hooks are added by ``attach()`` and removed by ``detach()`` (forward hooks) and
  ``end_backward()`` (gradient hooks): nothing stays behind.
- ``op_info(func)``: what a watcher needs of an op overload (name, random, view, returns
  uninitialised memory, the arguments it writes), cached per overload.
- ``leaves`` / ``tensors``: the leaves of an op's arguments (tuples, lists, dicts only; a
  faster ``tree_flatten`` for the per-op path).

Cost: one Python call per module call for the hooks, two gradient hooks per module call in
the forward; the dispatch mode's own cost is ~30 µs per op on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook

from gradoctor.torch_private import TorchDispatchMode

# ops that return memory they did not write
EMPTY_OPS = frozenset(
    {
        "aten.empty.memory_format",
        "aten.empty_like.default",
        "aten.empty_strided.default",
        "aten.new_empty.default",
        "aten.new_empty_strided.default",
        "aten.empty_permuted.default",
    }
)


def leaves(obj: Any, out: list[Any]) -> list[Any]:
    """Append the leaves of ``obj`` (nested tuples, lists and dicts) to ``out``."""
    if isinstance(obj, (tuple, list)):
        for x in obj:
            leaves(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            leaves(x, out)
    else:
        out.append(obj)
    return out


def dense(t: Any) -> bool:
    """A strided tensor with storage (not sparse, nested or on the meta device)."""
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_meta


def tensors(obj: Any) -> list[torch.Tensor]:
    """The dense tensors among the leaves of ``obj``."""
    return [t for t in leaves(obj, []) if dense(t)]


@dataclass(frozen=True)
class OpInfo:
    """``name``: ``aten.add.Tensor``; ``random``: draws from a generator
    (``nondeterministic_seeded``); ``view``: its outputs alias its input; ``empty``: returns
    memory it did not write; ``mutated``: (position, name) of the arguments it writes
    (``(a!)`` in its schema)."""

    name: str
    random: bool
    view: bool
    empty: bool
    mutated: tuple[tuple[int, str], ...]

    @property
    def short(self) -> str:
        """``aten.add`` (the overload dropped)."""
        parts = self.name.split(".")
        return ".".join(parts[:2]) if len(parts) == 3 else self.name

    def written(self, out: Any, args: tuple, kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The tensors the op wrote: its outputs, then the arguments it mutated (once each)."""
        result = tensors(out)
        if self.mutated:
            seen = {id(t) for t in result}
            wrote = [args[i] if i < len(args) else kwargs.get(n) for i, n in self.mutated]
            result += [t for t in tensors(wrote) if id(t) not in seen]
        return result


_INFO: dict[Any, OpInfo] = {}


def op_info(func: Any) -> OpInfo:
    """``OpInfo`` of an op overload (computed once per overload)."""
    info = _INFO.get(func)
    if info is None:
        name = str(func)
        mutated = tuple(
            (i, a.name)
            for i, a in enumerate(func._schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
        info = _INFO[func] = OpInfo(
            name,
            torch.Tag.nondeterministic_seeded in func.tags,
            bool(func.is_view),
            name in EMPTY_OPS,
            mutated,
        )
    return info


class OpWatch(TorchDispatchMode):
    """Hands every aten op to ``handler(func, args, kwargs)``, which returns the result."""

    def __init__(self, handler: Callable[[Any, tuple, dict[str, Any]], Any]):
        super().__init__()
        self.handler = handler

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return self.handler(func, args, kwargs or {})


def nested(outer: str, inner: str) -> bool:
    """Whether module ``inner`` is inside ``outer`` (qualified names; ``(root)`` holds all)."""
    return outer != inner and (outer == "(root)" or inner.startswith(outer + "."))


def _depth(name: str) -> int:
    return 0 if name == "(root)" else name.count(".") + 1


class ModuleScope:
    """The innermost module running an op (module docstring). ``phase`` is set by the
    owner: ``forward`` while the forward runs (gradient hooks are registered only then),
    ``backward`` while the backward runs, anything else otherwise."""

    def __init__(self, model: nn.Module, *, track_backward: bool = True):
        self.model = model
        self.track_backward = track_backward  # False: no gradient hooks (forward names only)
        self.names = {m: (n or "(root)") for n, m in model.named_modules()}
        self.phase = ""
        self._fwd: list[str] = []
        self._fwd_inputs: list[set[int]] = []
        self._bwd: list[str] = []
        self._root_done = False
        self._module_hooks: list[Any] = []
        self._grad_hooks: list[Any] = []

    # ---- lifecycle --------------------------------------------------------------------------
    def attach(self) -> None:
        """Add the forward hooks to every module of the model."""
        if self._module_hooks:
            return
        for module in self.names:
            self._module_hooks.append(module.register_forward_pre_hook(self._pre))
            self._module_hooks.append(module.register_forward_hook(self._post))

    def begin_forward(self) -> None:
        """A micro-batch's forward starts."""
        self.phase = "forward"
        self._fwd, self._fwd_inputs, self._root_done = [], [], False

    def begin_backward(self) -> None:
        self.phase = "backward"
        self._bwd = []

    def end_backward(self) -> None:
        """Remove the gradient hooks of the micro-batch's forward."""
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks.clear()

    def detach(self) -> None:
        """Remove every hook (forward and gradient)."""
        for h in self._module_hooks:
            h.remove()
        self._module_hooks.clear()
        self.end_backward()
        self.phase = ""

    # ---- the current module -----------------------------------------------------------------
    def current(self) -> str:
        """The innermost module running now (see the module docstring)."""
        if self.phase == "backward":
            if self._fwd:  # activation-checkpoint recomputation (see _bwd_enter)
                return self._fwd[-1]
            return self._bwd[-1] if self._bwd else "(loss)"
        if self._fwd:
            return self._fwd[-1]
        return "(loss)" if self._root_done else "(outside)"

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names[module]
        ins = [t for t in tensors(args) if t.requires_grad]
        if self.track_backward and self.phase == "forward" and torch.is_grad_enabled() and ins:
            self._grad_hooks.append(
                register_multi_grad_hook(ins, lambda *_g, n=name: self._bwd_exit(n))
            )
        self._fwd.append(name)
        self._fwd_inputs.append({id(t) for t in ins})

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        name = self.names[module]
        passed: set[int] = set()
        if self._fwd and self._fwd[-1] == name:
            self._fwd.pop()
            passed = self._fwd_inputs.pop()
        if module is self.model and self.phase == "forward":
            self._root_done = True
        if self.track_backward and self.phase == "forward" and torch.is_grad_enabled():
            # an input returned as is (Dropout(0), Identity) has no backward of this module
            outs = [t for t in tensors(out) if t.requires_grad and id(t) not in passed]
            if outs:
                self._grad_hooks.append(
                    register_multi_grad_hook(
                        outs, lambda *_g, n=name: self._bwd_enter(n), mode="any"
                    )
                )

    def _bwd_enter(self, name: str) -> None:
        """A module's backward begins: it joins the open modules, which stay ordered outermost
        first (a parent's output hook may fire after its child's, on the same tensor);
        modules on another branch are closed (their inputs needed no gradient: no exit)."""
        # between two nodes of the graph no recomputation runs: one that stopped early (the
        # checkpoint's default) never ran its modules' post hooks
        self._fwd, self._fwd_inputs = [], []
        stack = [n for n in self._bwd if nested(n, name) or nested(name, n)]
        if name not in stack:
            stack.append(name)
        stack.sort(key=_depth)
        self._bwd = stack

    def _bwd_exit(self, name: str) -> None:
        self._fwd, self._fwd_inputs = [], []
        self._bwd = [n for n in self._bwd if n != name and not nested(name, n)]


__all__ = [
    "EMPTY_OPS",
    "ModuleScope",
    "OpInfo",
    "OpWatch",
    "dense",
    "leaves",
    "nested",
    "op_info",
    "tensors",
]
