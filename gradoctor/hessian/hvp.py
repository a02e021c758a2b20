"""Hessian-vector products of the mean loss, and the fallback chain that finds a way to take them.

``HessianVectorProduct(floss)(v)``: ``[P]`` float64 -> ``[P]`` float64, H·v of the mean of the
per-batch losses, computed one batch at a time (peak memory is that of one batch) in the
parameters' dtype. One call = one HVP: per batch ≈ 2.5-4 gradients' time on CPU by double
backward, 8-11 by forward-over-reverse (measured, below).

The method is chosen at the first call, trying in order:

1. forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` (no graph of the gradient is
   kept; the lower-memory method, and the one curvlinops moved to after measuring it faster
   and 30% lighter on a GPU);
2. double backward: ``torch.autograd.grad(create_graph=True)``, then the gradient of g·v;
3. and 4. the same two under ``sdpa_kernel(SDPBackend.MATH)``: the fused flash / efficient
   ``scaled_dot_product_attention`` kernels have neither forward AD (pytorch#98164) nor
   double backward (#116350); the math kernel has both.

On CPU, 1 and 2 swap places (and 3 and 4): double backward measured 2.0-3.4x faster there
(torch 2.13, one thread: tanh MLP P=2883 4.0 vs 11.9 ms, BatchNorm CNN P=723 11.4 vs 23.8 ms,
fp32 MLP on 1024 samples 6.7 vs 22.4 ms), and host memory is rarely what limits.

``hvp_method`` names the method that worked, ``fallback`` why the earlier ones did not (the
blocking op as PyTorch names it). When none works, UserCodeError names the op and, found with
one extra forward under ``ModuleTracker``, the innermost module that runs it.

Across ranks (``ranks``, a ``RankSum``; ``ranks.py``): ``floss.batches`` are this rank's
share; each call sums this rank's per-batch HVPs (in the parameters' dtype), then one
``all_reduce(SUM)`` of [Σ H_b·v, local batch count, Σv, (Σv)², ‖v‖₁, failure flag] (P + 5
float64) gives H·v of the mean over all ranks' batches, bitwise the same on every rank. The
sums of Σv and (Σv)² are a cheap lockstep check (every rank multiplied the same v). A method
counts as failed when it failed on any rank, so every rank walks the fallback chain in step
and picks the same method.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.module_tracker import ModuleTracker

from gradoctor.errors import UsageError, UserCodeError
from gradoctor.hessian.functional import FunctionalLoss
from gradoctor.hessian.ranks import RankFailed, RankSum
from gradoctor.torch_private import TorchDispatchMode

FORWARD_OVER_REVERSE = "forward-over-reverse"
DOUBLE_BACKWARD = "double-backward"
SDPA_MATH = "sdpa-math"

Tensors = dict[str, torch.Tensor]


def forward_over_reverse(floss: FunctionalLoss, batch: Any, v: Tensors) -> Tensors:
    """H_b·v for one batch: ``jvp(grad(loss_b), params, v)``."""

    def loss(params: Tensors) -> torch.Tensor:
        return floss.batch_loss(params, batch)

    with warnings.catch_warnings():
        # torch's first forward-AD call scripts its jvp decompositions with the deprecated
        # torch.jit.script (torch 2.13): torch's own warning, nothing the user can act on.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        _, hv = torch.func.jvp(torch.func.grad(loss), (floss.params,), (v,))
    return hv


def double_backward(floss: FunctionalLoss, batch: Any, v: Tensors) -> Tensors:
    """H_b·v for one batch: ∂(∂loss_b/∂θ · v)/∂θ with ``torch.autograd.grad`` twice."""
    leaves = {n: t.detach().requires_grad_() for n, t in floss.params.items()}
    inputs = list(leaves.values())
    with torch.enable_grad():
        loss = floss.batch_loss(leaves, batch)
        grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        terms = [(g * v[n]).sum() for n, g in zip(leaves, grads) if g is not None]
        dot = torch.stack(terms).sum() if terms else None
        if dot is None or not dot.requires_grad:  # the gradient does not depend on θ
            return {n: torch.zeros_like(t) for n, t in leaves.items()}
        hv = torch.autograd.grad(dot, inputs, allow_unused=True)
    return {n: torch.zeros_like(t) if h is None else h for (n, t), h in zip(leaves.items(), hv)}


@dataclass(frozen=True)
class Method:
    name: str
    per_batch: Callable[[FunctionalLoss, Any, Tensors], Tensors]
    sdpa_math: bool

    @property
    def label(self) -> str:
        return f"{self.name}+{SDPA_MATH}" if self.sdpa_math else self.name

    def context(self) -> contextlib.AbstractContextManager:
        return sdpa_kernel(SDPBackend.MATH) if self.sdpa_math else contextlib.nullcontext()


FORWARD_FIRST = (
    Method(FORWARD_OVER_REVERSE, forward_over_reverse, False),
    Method(DOUBLE_BACKWARD, double_backward, False),
    Method(FORWARD_OVER_REVERSE, forward_over_reverse, True),
    Method(DOUBLE_BACKWARD, double_backward, True),
)
DOUBLE_BACKWARD_FIRST = tuple(FORWARD_FIRST[i] for i in (1, 0, 3, 2))


def default_chain(device: torch.device) -> tuple[Method, ...]:
    """The order methods are tried in on ``device`` (see the module docstring)."""
    return DOUBLE_BACKWARD_FIRST if device.type == "cpu" else FORWARD_FIRST


class HessianVectorProduct:
    """H·v of ``floss``'s mean loss; ``count`` HVPs so far, ``method`` and ``fallback`` once
    the first call chose them. ``methods`` overrides the chain (tests pin one method);
    ``ranks`` sums over the ranks of a process group (module docstring)."""

    def __init__(
        self,
        floss: FunctionalLoss,
        methods: tuple[Method, ...] | None = None,
        ranks: RankSum | None = None,
    ):
        self.floss = floss
        self.count = 0
        self.method: Method | None = None
        self.fallback: str | None = None
        self.ranks = ranks
        self._chain = default_chain(floss.layout.device) if methods is None else methods

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        v = self.floss.layout.unflatten(flat)
        if self.method is None:
            hv = self._first(flat, v)
        else:
            hv = self._run(self.method, flat, v)
        self.count += 1
        return hv

    def _local_sum(self, method: Method, v: Tensors) -> Tensors | None:
        """Σ over this process's batches of H_b·v (None without batches)."""
        total: Tensors | None = None
        with method.context():
            for batch in self.floss.batches:
                hv = method.per_batch(self.floss, batch, v)
                total = hv if total is None else {n: total[n] + hv[n] for n in total}
        return total

    def _run(self, method: Method, flat: torch.Tensor, v: Tensors) -> torch.Tensor:
        """H·v, flat ``[P]`` float64: the mean over this process's batches, or with ``ranks``
        over every rank's batches (one all-reduce)."""
        layout = self.floss.layout
        if self.ranks is None:
            total = self._local_sum(method, v)
            assert total is not None  # hessian_spectrum refuses an empty list of batches
            n = len(self.floss.batches)
            return layout.flatten({name: t / n for name, t in total.items()})

        def local() -> torch.Tensor:
            hv = layout.flatten(self._local_sum(method, v) or {})
            x = flat.to(torch.float64)
            c = float(x.sum())
            extra = [float(len(self.floss.batches)), c, c * c, float(x.abs().sum())]
            return torch.cat([hv, torch.tensor(extra, dtype=torch.float64, device=hv.device)])

        summed = self.ranks.sum_local(local, layout.size + 4, layout.device)
        count, *check = summed[layout.size :].tolist()
        _check_same_vector(*check, world=self.ranks.world)
        return summed[: layout.size] / count

    def _first(self, flat: torch.Tensor, v: Tensors) -> torch.Tensor:
        failures: list[tuple[Method, BaseException]] = []
        for method in self._chain:
            try:
                hv = self._run(method, flat, v)
            except torch.cuda.OutOfMemoryError:  # not a missing derivative; the same for all
                raise
            except RankFailed as exc:  # another rank's failure, seen here
                if exc.fatal:
                    raise
                failures.append((method, exc))
                continue
            except UsageError:  # ranks out of step: no method would help
                raise
            except Exception as exc:  # an op without the derivative this method needs
                failures.append((method, exc))
                continue
            self.method = method
            self.fallback = "; ".join(_failure_line(m, e) for m, e in failures) or None
            return hv
        raise self._not_twice_differentiable(failures)

    def _not_twice_differentiable(
        self, failures: list[tuple[Method, BaseException]]
    ) -> UserCodeError:
        op, why = blocking_op(failures[0][1])
        ops = {blocking_op(exc)[0] for _, exc in failures} - {None}
        module = locate_op(self.floss, ops) if ops else None
        where = f" (run by module '{module}')" if module else ""
        tried = "\n".join("  " + _failure_line(m, e) for m, e in failures)
        return UserCodeError(
            f"the loss is not twice differentiable: {op or 'an op'} {why}{where}\ntried:\n{tried}",
            hint="replace that op with one that has double-backward support, or give its "
            "custom autograd.Function a differentiable backward (and a jvp for forward AD)",
        )


def _check_same_vector(sum_c: float, sum_c2: float, sum_l1: float, *, world: int) -> None:
    """Every rank must have multiplied the same vector v (lockstep). From the sums over ranks
    of c = Σv, c² and ‖v‖₁ only, so every rank reaches the same verdict: the spread of c over
    ranks must be below 1e-6·‖v‖₁ (far above rounding, far below any real mismatch)."""
    variance = sum_c2 / world - (sum_c / world) ** 2
    if not variance > (1e-6 * sum_l1 / world) ** 2:  # NaN passes: not a mismatch
        return
    raise UsageError(
        f"the {world} ranks multiplied different vectors (the sums of their entries spread "
        f"by {variance**0.5:.3g} around {sum_c / world:.6g}): the ranks are out of step",
        hint="pass the same v0, preconditioner and rayleigh directions (and seed) on every "
        "rank, and run every rank with the same numpy/scipy and thread count",
    )


_PATTERNS = (
    (re.compile(r"forward AD with '?([\w.:]+)'? that does not support"), "has no forward-mode AD"),
    (
        re.compile(r"derivative for '?([\w.:]+)'? is not implemented"),
        "has no derivative (no double backward)",
    ),
    (re.compile(r"(aten::[\w.]+)"), "failed"),
)


def blocking_op(exc: BaseException) -> tuple[str | None, str]:
    """``(op, why)`` read from the exception's message (op None when it names none)."""
    text = str(exc)
    for pattern, why in _PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1), why
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return None, f"failed: {first[:200]}"


def _failure_line(method: Method, exc: BaseException) -> str:
    op, why = blocking_op(exc)
    return f"{method.label}: {op} {why}" if op else f"{method.label}: {why}"


class _OpSpy(TorchDispatchMode):
    """Records the innermost module (per ``ModuleTracker``) that runs one of ``ops``."""

    def __init__(self, ops: set[str], tracker: ModuleTracker):
        super().__init__()
        self.ops, self.tracker, self.module = ops, tracker, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.module is None and func._schema.name.removeprefix("aten::") in self.ops:
            self.module = max(self.tracker.parents, key=lambda n: n.count("."), default=None)
        return func(*args, **(kwargs or {}))


def _forward_names(op: str) -> set[str]:
    """Forward ops an op named in an error may stand for: ``aten::x.overload`` -> ``x``;
    ``x_backward`` -> ``x``, ``x_forward`` (``_cdist_backward`` belongs to ``_cdist_forward``)."""
    name = op.removeprefix("aten::").split(".")[0]
    base = name.removesuffix("_backward")
    return {name, base, base + "_forward"}


def locate_op(floss: FunctionalLoss, ops: set[str]) -> str | None:
    """The qualified name of the innermost module whose forward runs one of ``ops`` (or the
    forward op of a ``*_backward``), found with one forward on the first batch; None if not
    seen."""
    if not floss.batches:  # a rank without batches (distributed)
        return None
    names = set().union(*(_forward_names(op) for op in ops))
    # Parameters that require grad, as in the HVP's own forward: some ops dispatch to another
    # kernel without autograd (embedding_bag -> _embedding_bag_forward_only).
    leaves = {n: t.detach().requires_grad_() for n, t in floss.params.items()}
    try:
        with torch.enable_grad(), ModuleTracker() as tracker, _OpSpy(names, tracker) as spy:
            floss.batch_loss(leaves, floss.batches[0])
    except Exception:  # a best-effort hint only
        return None
    if spy.module is None:
        return None
    # ModuleTracker names modules "<RootClass>.<attr>..."; the root is the loss wrapper.
    parts = spy.module.split(".")[2:]
    return ".".join(parts) or type(floss.model).__name__
