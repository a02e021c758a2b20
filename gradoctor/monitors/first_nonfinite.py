"""Replay one training step with every module watched, to find where the first NaN/Inf came from.

Run only after the fast path saw a non-finite loss, gradient or persistent fp16 overflow, on
the exact step (weights, optimizer state, batch and RNG restored). Forward: a
``TorchDispatchMode`` checks every op's output and names the first op whose inputs were all
finite and whose output was not, with the innermost module running it (module pre/post
hooks keep the stack). Backward: tensor hooks (never full backward hooks, which break on
in-place activations) on each module's outputs, on a private view of each of its inputs, and
on every parameter give, in execution order, the first module whose gradient came out
non-finite from a finite incoming gradient; autograd node hooks name the op. Forward hooks
firing again during checkpoint recomputation are ignored. Everything is removed afterwards.
Cost: a few times one step (an isfinite check and host sync per op).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradoctor.torch_private import TorchDispatchMode, tree_flatten


def _float_tensors(obj: Any) -> list[torch.Tensor]:
    return [
        t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def _finite(tensors: list[torch.Tensor]) -> bool:
    # detached: isfinite decomposes into abs/eq, which autograd would otherwise record (and save)
    with torch.no_grad():
        return all(bool(torch.isfinite(t.detach()).all()) for t in tensors)


def value_range(tensors: list[torch.Tensor]) -> dict[str, Any]:
    """min / max / absmax over the finite values, and how many are NaN / Inf (syncs)."""
    if not tensors:
        return {}
    flat = torch.cat([t.detach().float().flatten() for t in tensors])
    finite = flat[torch.isfinite(flat)]
    out: dict[str, Any] = {
        "numel": int(flat.numel()),
        "nan": int(torch.isnan(flat).sum()),
        "inf": int(torch.isinf(flat).sum()),
    }
    if finite.numel():
        out.update(
            min=float(finite.min()), max=float(finite.max()), absmax=float(finite.abs().max())
        )
    return out


def _kind(tensors: list[torch.Tensor]) -> str:
    nan = any(bool(torch.isnan(t.detach()).any()) for t in tensors)
    inf = any(bool(torch.isinf(t.detach()).any()) for t in tensors)
    return "nan+inf" if nan and inf else "nan" if nan else "inf"


@dataclass
class ReplayFinding:
    """Where the first non-finite value appeared. ``phase``: input | forward | backward | none."""

    phase: str
    module: str | None = None
    op: str | None = None
    kind: str | None = None
    input_range: dict[str, Any] = field(default_factory=dict)
    output_range: dict[str, Any] = field(default_factory=dict)
    grad_output_range: dict[str, Any] = field(default_factory=dict)
    propagated_to: list[str] = field(default_factory=list)  # later modules that turned non-finite
    replay_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}


class _Tracker:
    def __init__(self, model: nn.Module):
        self.names = {m: (n or "(root)") for n, m in model.named_modules()}
        self.phase = "forward"
        self.stack: list[str] = []
        self.first_forward: dict[str, Any] | None = None
        self.bad_outputs: list[str] = []
        self.counter = itertools.count()
        self.grad_out_finite: dict[str, bool] = {}
        self.backward_events: list[tuple[int, str, bool, dict[str, Any]]] = []
        self.first_node: str | None = None
        self.inputs: dict[str, list[torch.Tensor]] = {}


class _WatchOps(TorchDispatchMode):
    def __init__(self, tracker: _Tracker):
        super().__init__()
        self.t = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if self.t.first_forward is not None or self.t.phase != "forward":
            return func(*args, **kwargs)
        ins = _float_tensors((args, kwargs))
        ins_finite = _finite(ins)
        if ins_finite:
            in_range = value_range(ins)
        out = func(*args, **kwargs)
        outs = _float_tensors(out)
        if ins_finite and outs and not _finite(outs):
            self.t.first_forward = {
                "op": str(func.overloadpacket.__name__)
                if hasattr(func, "overloadpacket")
                else str(func),
                "module": self.t.stack[-1] if self.t.stack else None,
                "input_range": in_range,
                "output_range": value_range(outs),
                "kind": _kind(outs),
            }
        return out


@contextlib.contextmanager
def _watch(model: nn.Module, tracker: _Tracker) -> Iterator[None]:
    handles: list[Any] = []

    def pre(module: nn.Module, args: tuple) -> tuple | None:
        if tracker.phase != "forward":
            return None
        name = tracker.names[module]
        tracker.stack.append(name)
        new_args = []
        changed = False
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.requires_grad:
                a = a.view_as(a)  # a private node: its gradient comes from this module alone
                a.register_hook(lambda g, name=name: _grad_in(tracker, name, g))
                changed = True
            new_args.append(a)
        tracker.inputs.setdefault(
            name, [a for a in new_args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        )
        return tuple(new_args) if changed else None

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if tracker.phase != "forward":
            return
        name = tracker.stack.pop() if tracker.stack else tracker.names[module]
        outs = _float_tensors(out)
        if outs and not _finite(outs) and name not in tracker.bad_outputs:
            tracker.bad_outputs.append(name)
        for t in outs:
            if t.requires_grad:
                t.register_hook(lambda g, name=name: _grad_out(tracker, name, g))

    for module in tracker.names:
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    for pname, p in model.named_parameters():
        if p.requires_grad:
            owner = pname.rsplit(".", 1)[0] if "." in pname else "(root)"
            handles.append(p.register_hook(lambda g, owner=owner: _grad_in(tracker, owner, g)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _grad_out(tracker: _Tracker, name: str, grad: torch.Tensor) -> None:
    ok = _finite([grad])
    tracker.grad_out_finite[name] = tracker.grad_out_finite.get(name, True) and ok


def _grad_in(tracker: _Tracker, name: str, grad: torch.Tensor) -> None:
    ok = _finite([grad])
    info = {} if ok else {"kind": _kind([grad]), "range": value_range([grad])}
    tracker.backward_events.append((next(tracker.counter), name, ok, info))


def _hook_nodes(loss: torch.Tensor, tracker: _Tracker) -> list[Any]:
    """Autograd node hooks: the first node turning finite grad_outputs into non-finite grad_inputs."""
    handles, seen, todo = [], set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)

        def hook(grad_inputs, grad_outputs, fn=fn):  # noqa: ANN001
            if tracker.first_node is not None:
                return
            gin = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
            gout = [g for g in grad_outputs if isinstance(g, torch.Tensor)]
            if gin and _finite(gout) and not _finite(gin):
                tracker.first_node = fn.name()

        handles.append(fn.register_hook(hook))
        todo.extend(nf for nf, _ in fn.next_functions)
    return handles


def replay_step(
    model: nn.Module,
    batches: list[Any],
    forward: Callable[[Any], torch.Tensor],
    backward: Callable[[torch.Tensor], None],
) -> ReplayFinding:
    """Re-run one step's micro-batches with every module watched.

    ``forward(batch)`` returns the loss to differentiate (already scaled/divided as in the
    real step); ``backward(loss)`` runs the backward. Gradients are left for the caller to
    clear. The first non-finite value wins: a bad batch, then forward, then backward.
    """
    import time

    start = time.perf_counter()
    for i, batch in enumerate(batches):
        bad = [t for t in _float_tensors(batch) if not _finite([t])]
        if bad:
            return ReplayFinding(
                phase="input",
                module=None,
                op=f"batch {i}",
                kind=_kind(bad),
                input_range=value_range(bad),
            )
    tracker = _Tracker(model)
    finding = ReplayFinding(phase="none")
    with _watch(model, tracker):
        for batch in batches:
            tracker.phase, tracker.stack = "forward", []
            with _WatchOps(tracker):
                loss = forward(batch)
            if tracker.first_forward is not None:
                f = tracker.first_forward
                finding = ReplayFinding(
                    phase="forward",
                    module=f["module"] or "(loss)",
                    op=f["op"],
                    kind=f["kind"],
                    input_range=f["input_range"],
                    output_range=f["output_range"],
                    propagated_to=[m for m in tracker.bad_outputs if m != f["module"]][:5],
                )
                break
            tracker.phase = "backward"
            handles = _hook_nodes(loss, tracker)
            try:
                backward(loss)
            finally:
                for h in handles:
                    h.remove()
            origin = _backward_origin(tracker)
            if origin is not None:
                name, info = origin
                finding = ReplayFinding(
                    phase="backward",
                    module=name,
                    op=tracker.first_node,
                    kind=info["kind"],
                    input_range=value_range(tracker.inputs.get(name, [])),
                    grad_output_range={"gradient": info["range"]},
                )
                break
    finding.replay_s = time.perf_counter() - start
    return finding


def _backward_origin(tracker: _Tracker) -> tuple[str, dict[str, Any]] | None:
    for _, name, ok, info in sorted(tracker.backward_events):
        if not ok and tracker.grad_out_finite.get(name, True):
            return name, info
    for _, name, ok, info in sorted(tracker.backward_events):  # all incoming grads already bad
        if not ok:
            return name, info
    return None
