"""The pattern detector: an instrument that watches the forward's aten ops of the audited
steps and names numerically unstable patterns on the real values, before they go non-finite.

Every op of the forward (``monitors.op_scope.OpWatch``: functional calls, tensor methods,
modules, custom ``autograd.Function``s alike) adds a node to a provenance graph: the op and
the nodes of its inputs (casts, copies and views are seen through, so autocast's
``_to_copy`` and a ``.detach()`` do not hide a pattern; a multiplication or division by a
Python number is marked as a rescaling). When an op completes one of the patterns of
``findings.CODES`` — a ``div`` of an ``exp`` by the ``sum`` of the same ``exp``, a ``log`` of
a ``softmax``, a ``sub`` of a squared mean from a mean of squares, ... — its measurements are
taken on the device (a few reductions of the op's inputs) with the innermost module
(``ModuleScope``). Gradients are checked after unscaling (underflow, overflow). At the end of
each audited step the measurements are copied to the host at once (one host sync per step)
and graded (``findings`` states the thresholds).

Phase: the patterns are matched in the forward (the backward's inf of ``sqrt`` at 0 is
reported at the forward op that causes it); ``backward`` for the gradient checks.

Cost: the dispatch mode (~30 µs per op on a CPU), host bookkeeping per op, and one or two
small reductions per pattern op; with a 16-bit target also one |max| per op output (overflow)
and two counts per gradient (underflow). Values are only read.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradoctor.monitors.instrument import Instrument, StepOutcome, StepView
from gradoctor.monitors.op_scope import ModuleScope, OpWatch, leaves, op_info
from gradoctor.numerics.findings import (
    FIXES,
    THRESHOLDS,
    WHAT,
    Finding,
    exp_overflow_point,
    mantissa_bits,
    merge,
    sigmoid_saturation,
    smallest_subnormal,
)

# seen through: their output carries the pattern of their input
_TRANSPARENT = frozenset(
    {
        "aten._to_copy",
        "aten.to",
        "aten.clone",
        "aten.detach",
        "aten.view",
        "aten.reshape",
        "aten._unsafe_view",
        "aten.expand",
        "aten.squeeze",
        "aten.unsqueeze",
        "aten.t",
        "aten.transpose",
        "aten.permute",
        "aten.contiguous",
        "aten.alias",
        "aten.lift_fresh",
        "aten.expand_as",
        "aten.view_as",
        "aten.flatten",
        "aten.copy",
    }
)
_MEANS = frozenset({"aten.mean", "aten.sum"})
_MAXES = frozenset({"aten.amax", "aten.max"})
_SCALES = frozenset(  # ops whose output is a magnitude that can be 0
    {
        "aten.linalg_vector_norm",
        "aten.norm",
        "aten.std",
        "aten.var",
        "aten.sqrt",
        "aten.sum",
        "aten.mean",
        "aten.abs",
        "aten.amax",
        "aten.pow",
    }
)
_ZERO_CAPABLE = frozenset(  # ops whose output can be exactly 0
    {"aten.relu", "aten.abs", "aten.sub", "aten.pow", "aten.mul", "aten.exp", "aten.sum"}
)
_LOGS = frozenset({"aten.log", "aten.log2", "aten.log10"})


@dataclass(eq=False)
class _Node:
    """The provenance of a tensor: ``op`` (``leaf`` for one no watched op produced), the
    nodes of its tensor inputs, its Python-number arguments, and a weak reference to it."""

    op: str
    ins: tuple[_Node, ...] = ()
    numbers: tuple[float, ...] = ()
    ref: Any = None

    @property
    def rescale_of(self) -> _Node | None:
        """The input of a multiplication/division by a Python number, else None."""
        if self.op in ("aten.mul", "aten.div") and len(self.ins) == 1 and self.numbers:
            return self.ins[0]
        return None

    def unscaled(self) -> _Node:
        node = self
        while (inner := node.rescale_of) is not None:
            node = inner
        return node

    def tensor(self) -> torch.Tensor | None:
        return self.ref() if self.ref is not None else None


def _square_of(node: _Node) -> _Node | None:
    """``x`` when ``node`` is x**2 or x*x (after rescalings), else None."""
    node = node.unscaled()
    if node.op == "aten.pow" and len(node.ins) == 1 and node.numbers == (2.0,):
        return node.ins[0]
    if node.op == "aten.mul" and len(node.ins) == 2 and node.ins[0] is node.ins[1]:
        return node.ins[0]
    return None


def _mean_of(node: _Node) -> _Node | None:
    """``x`` when ``node`` is mean(x) or sum(x) (rescaled), else None."""
    node = node.unscaled()
    return node.ins[0] if node.op in _MEANS and node.ins else None


def _shifted_by_max(node: _Node) -> bool:
    """Whether ``node`` is x - max(x) (the stable form of an exponent)."""
    return node.op == "aten.sub" and len(node.ins) == 2 and node.ins[1].op in _MAXES


@dataclass
class _Pending:
    """A pattern occurrence whose measurements are on the device until the step's flush."""

    code: str
    module: str
    op: str
    phase: str
    step: int
    dtype: torch.dtype
    stats: dict[str, torch.Tensor]
    grade: Callable[[dict[str, float]], tuple[str, str, dict[str, Any]] | None]
    meta: dict[str, Any] = field(default_factory=dict)


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


class PatternDetector(Instrument):
    """Finds the unstable patterns of ``findings.CODES`` in the steps it takes part in.

    ``target``: the precision the audit grades against besides each op's own dtype
    (``torch.bfloat16``/``torch.float16``; None: each op's dtype only); ``steps``: the
    optimizer steps to audit (None: every step it is given); ``loss_scale``: the scale the
    gradients would carry in the target precision when the run has no scaler of its own
    (fp16: GradScaler's initial 65536). ``findings``: what was found, merged per (code,
    module, op, phase)."""

    name = "numerics audit"

    def __init__(
        self,
        model: nn.Module,
        *,
        target: torch.dtype | None = None,
        steps: set[int] | None = None,
        loss_scale: float | None = None,
    ):
        self.model = model
        self.scope = ModuleScope(model, track_backward=False)
        self.target = target
        self.steps = steps
        self.loss_scale = loss_scale
        self.owner = {id(p): n.rpartition(".")[0] or "(root)" for n, p in model.named_parameters()}
        self.findings: dict[tuple[str, str, str, str], Finding] = {}
        self._prov: dict[int, tuple[Any, _Node]] = {}
        self._pending: list[_Pending] = []
        self._absmax: dict[str, tuple[torch.Tensor, torch.dtype]] = {}
        self._step = 0
        self.ops_seen = 0

    def active(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    # ---- provenance -------------------------------------------------------------------------
    def _node(self, t: torch.Tensor) -> _Node:
        hit = self._prov.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        node = _Node("leaf", ref=weakref.ref(t))
        self._prov[id(t)] = (node.ref, node)
        return node

    def _op(self, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        out = func(*args, **kwargs)
        info = op_info(func)
        name = info.short
        flat = leaves((args, kwargs), [])
        ins = [t for t in flat if isinstance(t, torch.Tensor)]
        in_nodes = tuple(self._node(t) for t in ins)
        numbers = tuple(
            float(x) for x in flat if isinstance(x, (int, float)) and not isinstance(x, bool)
        )
        written = [t for t in info.written(out, args, kwargs) if t.is_floating_point()]
        if written and name not in _TRANSPARENT:
            self.ops_seen += 1  # floating-point compute (casts, copies and views not counted)
        if name in _TRANSPARENT and in_nodes:
            node = in_nodes[0]
        else:
            node = _Node(name, in_nodes, numbers)
            with torch.no_grad():
                self._check(name, args, ins, in_nodes, node, written)
        for t in written:
            ref = weakref.ref(t)
            if node.ref is None:
                node.ref = ref
            self._prov[id(t)] = (ref, node)
        if self.target is not None and written and self.target.itemsize == 2:
            self._track_range(written)
        return out

    def _track_range(self, written: list[torch.Tensor]) -> None:
        sizable = [t for t in written if t.numel()]
        if not sizable:
            return
        module = self.scope.current()
        with torch.no_grad():
            m = sizable[0].detach().abs().amax().float()
            for t in sizable[1:]:
                m = torch.maximum(m, t.detach().abs().amax().float())
        prev = self._absmax.get(module)
        if prev is not None:
            m = torch.maximum(prev[0], m)
        self._absmax[module] = (m, written[0].dtype)

    # ---- the patterns -----------------------------------------------------------------------
    def _add(
        self,
        code: str,
        op: str,
        dtype: torch.dtype,
        stats: dict[str, torch.Tensor],
        grade: Callable[[dict[str, float]], tuple[str, str, dict[str, Any]] | None],
        **meta: Any,
    ) -> None:
        self._pending.append(
            _Pending(
                code, self.scope.current(), op, "forward", self._step, dtype, stats, grade, meta
            )
        )

    def _dtypes(self, dtype: torch.dtype) -> list[torch.dtype]:
        """The dtype the op ran in, and the target precision (graded against both)."""
        out = [dtype]
        if self.target is not None and self.target != dtype:
            out.append(self.target)
        return out

    def _check(
        self,
        name: str,
        args: tuple,
        ins: list[torch.Tensor],
        nodes: tuple[_Node, ...],
        node: _Node,
        written: list[torch.Tensor],
    ) -> None:
        if not ins or not ins[0].is_floating_point():
            return
        if name == "aten.div" and len(ins) == 2 and isinstance(args[1], torch.Tensor):
            if self._naive_softmax(nodes, ins, written):
                return
            self._division(name, ins[1], nodes[1])
        elif name == "aten.reciprocal":
            self._division(name, ins[0], nodes[0])
        elif name in _LOGS:
            self._log(name, ins[0], nodes[0])
        elif name == "aten.binary_cross_entropy" and len(ins) >= 2:
            if nodes[0].op == "aten.sigmoid":
                self._bce_of_sigmoid(name, ins[0], ins[1], nodes[0])
        elif name == "aten.sub" and len(ins) == 2:
            self._variance(name, ins, nodes)
        elif name == "aten.sqrt" or (
            name == "aten.pow" and node.numbers == (0.5,) and len(ins) == 1
        ):
            self._sqrt(name, ins[0], nodes[0])

    def _naive_softmax(
        self, nodes: tuple[_Node, ...], ins: list[torch.Tensor], written: list[torch.Tensor]
    ) -> bool:
        num, den = nodes[0], nodes[1]
        if num.op != "aten.exp":
            return False
        summed = _mean_of(den)
        if summed is None or not (
            summed is num
            or (summed.op == "aten.exp" and summed.ins and num.ins and summed.ins[0] is num.ins[0])
        ):
            return False
        if num.ins and _shifted_by_max(num.ins[0]):
            return True  # the stable form, written out: nothing to report
        e = ins[0]
        stats = {
            "max_exponent": _f(e.amax()).log(),
            "nonfinite": _f((~torch.isfinite(written[0])).sum())
            if written
            else _f(torch.zeros(())),
        }
        dtypes = self._dtypes(e.dtype)

        self._add(
            "naive_softmax",
            "aten.div",
            e.dtype,
            stats,
            _exponent_grade(dtypes, f"{WHAT['naive_softmax']}: the largest exponent"),
        )
        return True

    def _division(self, name: str, d: torch.Tensor, dnode: _Node) -> None:
        scale = dnode.unscaled().op in _SCALES and not _guarded(dnode)
        absd = d.detach().abs()
        stats = {
            "min_abs": _f(absd.amin()) if d.numel() else _f(torch.ones(())),
            "zeros": _f((absd == 0).sum()),
        }

        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]] | None:
            ev = {
                "min_abs_divisor": s["min_abs"],
                "zero_divisors": int(s["zeros"]),
                "divisor_from": dnode.unscaled().op,
            }
            sev = _zero_severity(s["zeros"], s["min_abs"], THRESHOLDS["divisor_min"], scale)
            if sev is None:
                return None
            msg = (
                f"{WHAT['unguarded_division']}: the divisor ({dnode.unscaled().op}) reached "
                f"{s['min_abs']:.3g}" + (f", {int(s['zeros'])} exact zeros" if s["zeros"] else "")
            )
            return sev, msg, ev

        self._add("unguarded_division", name, d.dtype, stats, grade)

    def _log(self, name: str, x: torch.Tensor, xnode: _Node) -> None:
        base = xnode.unscaled()
        if base.op == "aten._softmax" or base.op == "aten.softmax":
            self._log_of_softmax(name, x)
        elif base.op == "aten.sigmoid":
            self._log_of_sigmoid(name, x, base)
        elif (
            base.op in _MEANS
            and base.ins
            and base.ins[0].op == "aten.exp"
            and not (base.ins[0].ins and _shifted_by_max(base.ins[0].ins[0]))
        ):
            self._naive_logsumexp(name, x, base.ins[0])
        elif base.op == "aten.div" and len(base.ins) == 2 and base.ins[0].op == "aten.exp":
            self._log_of_softmax(name, x)  # log of a written-out softmax
        else:
            self._log_of_zero(name, x, base)

    def _log_of_softmax(self, name: str, p: torch.Tensor) -> None:
        stats = {"min_p": _f(p.detach().amin()), "zeros": _f((p.detach() == 0).sum())}
        dtypes = self._dtypes(p.dtype)

        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]]:
            tiny = min(smallest_subnormal(d) for d in dtypes)
            ev = {
                "min_probability": s["min_p"],
                "zero_probabilities": int(s["zeros"]),
                "smallest_subnormal": tiny,
            }
            if s["zeros"] > 0:
                sev = "error"
            elif s["min_p"] < THRESHOLDS["tiny_factor"] * max(
                smallest_subnormal(d) for d in dtypes
            ):
                sev = "warning"
            else:
                sev = "info"
            msg = f"{WHAT['log_of_softmax']}: the smallest probability was {s['min_p']:.3g}" + (
                f" ({int(s['zeros'])} exactly 0: log gives -inf)"
                if s["zeros"]
                else "; it becomes -inf once a probability underflows to 0"
            )
            return sev, msg, ev

        self._add("log_of_softmax", name, p.dtype, stats, grade)

    def _saturation_grade(
        self, dtypes: list[torch.dtype], what: str
    ) -> Callable[[dict[str, float]], tuple[str, str, dict[str, Any]]]:
        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]]:
            sat = min(sigmoid_saturation(d) for d in dtypes)
            ev = {
                "max_abs_logit": s["max_logit"],
                "saturates_at": sat,
                "clamped_elements": int(s["clamped"]),
            }
            if s["clamped"] > 0:
                sev = "error"
            elif s["max_logit"] >= THRESHOLDS["sigmoid_fraction"] * sat:
                sev = "warning"
            else:
                sev = "info"
            msg = f"{what}: the largest |logit| was {s['max_logit']:.3g} (saturates at {sat:.3g})"
            if s["clamped"]:
                msg += (
                    f"; {int(s['clamped'])} element(s) saturated: the log is clamped "
                    "(loss 100) and their gradient is exactly 0"
                )
            return sev, msg, ev

        return grade

    def _log_of_sigmoid(self, name: str, p: torch.Tensor, snode: _Node) -> None:
        logits = snode.ins[0].tensor() if snode.ins else None
        pd = p.detach()
        stats = {
            "max_logit": _f(logits.detach().abs().amax())
            if logits is not None and logits.numel()
            else _f(torch.logit(pd.clamp(1e-45, 1 - 1e-7)).abs().amax()),
            "clamped": _f((pd == 0).sum()),  # log(0) = -inf
        }
        self._add(
            "log_of_sigmoid",
            name,
            p.dtype,
            stats,
            self._saturation_grade(self._dtypes(p.dtype), WHAT["log_of_sigmoid"]),
        )

    def _bce_of_sigmoid(self, name: str, p: torch.Tensor, y: torch.Tensor, snode: _Node) -> None:
        logits = snode.ins[0].tensor() if snode.ins else None
        pd, yd = p.detach(), y.detach()
        clamped = ((pd == 0) & (yd > 0)) | ((pd == 1) & (yd < 1))
        stats = {
            "max_logit": _f(logits.detach().abs().amax())
            if logits is not None and logits.numel()
            else _f(torch.zeros(())),
            "clamped": _f(clamped.sum()),
        }
        self._add(
            "log_of_sigmoid",
            name,
            p.dtype,
            stats,
            self._saturation_grade(self._dtypes(p.dtype), WHAT["log_of_sigmoid"]),
        )

    def _naive_logsumexp(self, name: str, s_out: torch.Tensor, exp_node: _Node) -> None:
        stats = {
            "max_exponent": _f(s_out.detach().amax()).log(),
            "nonfinite": _f((~torch.isfinite(s_out.detach())).sum()),
        }
        dtypes = self._dtypes(s_out.dtype)

        self._add(
            "naive_logsumexp",
            name,
            s_out.dtype,
            stats,
            _exponent_grade(dtypes, f"{WHAT['naive_logsumexp']}: log(sum(exp))"),
        )

    def _log_of_zero(self, name: str, x: torch.Tensor, base: _Node) -> None:
        if _guarded(base):
            return
        xd = x.detach()
        stats = {
            "min": _f(xd.amin()) if xd.numel() else _f(torch.ones(())),
            "zeros": _f((xd == 0).sum()),
        }
        dtypes = self._dtypes(x.dtype)
        capable = base.op in _ZERO_CAPABLE

        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]] | None:
            tiny = max(smallest_subnormal(d) for d in dtypes)
            ev = {"min_input": s["min"], "zeros": int(s["zeros"]), "input_from": base.op}
            sev = _zero_severity(s["zeros"], s["min"], THRESHOLDS["tiny_factor"] * tiny, capable)
            if sev is None:
                return None
            msg = f"{WHAT['log_of_zero']}: its input ({base.op}) reached {s['min']:.3g}" + (
                f", {int(s['zeros'])} exact zeros (-inf, and an inf gradient)" if s["zeros"] else ""
            )
            return sev, msg, ev

        self._add("log_of_zero", name, x.dtype, stats, grade)

    def _variance(self, name: str, ins: list[torch.Tensor], nodes: tuple[_Node, ...]) -> None:
        sq_mean, mean_sq = nodes
        x1 = _mean_of(sq_mean)
        x1 = _square_of(x1) if x1 is not None else None
        m = _square_of(mean_sq)
        x2 = _mean_of(m) if m is not None else None
        if x1 is None or x2 is None or x1 is not x2:
            return
        a, b = ins[0].detach(), ins[1].detach()
        diff = a - b
        rel = diff.abs() / a.abs().clamp_min(torch.finfo(a.dtype).tiny)
        stats = {
            "min_rel": _f(rel.amin()) if rel.numel() else _f(torch.ones(())),
            "nonpositive": _f(((diff <= 0) & (a > 0)).sum()),
        }
        dtypes = self._dtypes(a.dtype)

        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]]:
            lost = -math.log2(s["min_rel"]) if s["min_rel"] > 0 else float("inf")
            bits = min(mantissa_bits(d) for d in dtypes)
            ev = {
                "lost_bits": lost,
                "mantissa_bits": bits,
                "nonpositive_variances": int(s["nonpositive"]),
            }
            if s["nonpositive"] > 0:
                sev = "error"
            elif lost >= THRESHOLDS["lost_fraction"] * bits:
                sev = "warning"
            else:
                sev = "info"
            msg = (
                f"{WHAT['naive_variance']}: cancellation lost {lost:.3g} of {bits:.3g} "
                "mantissa bits"
                + (
                    f"; {int(s['nonpositive'])} variance(s) came out <= 0"
                    if s["nonpositive"]
                    else ""
                )
            )
            return sev, msg, ev

        self._add("naive_variance", name, a.dtype, stats, grade)

    def _sqrt(self, name: str, x: torch.Tensor, xnode: _Node) -> None:
        if not x.requires_grad:
            return  # no backward through it
        base = xnode.unscaled()
        if _guarded(base):
            return
        inner = _mean_of(base)
        sum_of_squares = (inner is not None and _square_of(inner) is not None) or _square_of(
            base
        ) is not None
        xd = x.detach()
        stats = {
            "min": _f(xd.amin()) if xd.numel() else _f(torch.ones(())),
            "zeros": _f((xd == 0).sum()),
        }

        def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]] | None:
            ev = {"min_input": s["min"], "zeros": int(s["zeros"])}
            sev = _zero_severity(s["zeros"], s["min"], THRESHOLDS["sqrt_min"], sum_of_squares)
            if sev is None:
                return None
            msg = f"{WHAT['sqrt_at_zero']}: its input reached {s['min']:.3g}" + (
                f", {int(s['zeros'])} exact zeros: the backward gives inf/NaN there"
                if s["zeros"]
                else ""
            )
            return sev, msg, ev

        self._add("sqrt_at_zero", name, x.dtype, stats, grade)

    # ---- gradients --------------------------------------------------------------------------
    def after_unscale(self, view: StepView) -> None:
        if self.target is None or self.target.itemsize != 2:
            return
        live = view.loss_scale()
        scale = (
            live if live is not None else torch.tensor(self.loss_scale or 1.0, device=view.device)
        )
        tiny = smallest_subnormal(self.target)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                g = p.grad
                if g is None or not g.is_floating_point() or not g.numel():
                    continue
                scaled = g.detach().abs().float() * scale.float()
                nonzero = g != 0
                stats = {
                    "nonzero": _f(nonzero.sum()),
                    "flushed": _f((nonzero & (scaled < tiny)).sum()),
                }
                module = n.rpartition(".")[0] or "(root)"
                self._pending.append(
                    _Pending(
                        "underflow",
                        module,
                        f"grad {n}",
                        "backward",
                        self._step,
                        self.target,
                        stats,
                        _underflow_grade(self.target, tiny),
                    )
                )

    # ---- the instrument's hooks -------------------------------------------------------------
    def step_start(self, view: StepView) -> None:
        self._step = view.step
        self.scope.attach()

    @contextlib.contextmanager
    def forward(self, view: StepView) -> Iterator[None]:
        self.scope.begin_forward()
        try:
            with OpWatch(self._op):
                yield
        finally:
            self.scope.phase = ""

    def step_end(self, view: StepView, outcome: StepOutcome) -> None:
        self.scope.detach()
        self._flush()

    def close(self) -> None:
        self.scope.detach()

    def _flush(self) -> None:
        """The step's one host copy of every measurement, then the grading."""
        for module, (m, dtype) in self._absmax.items():
            self._pending.append(
                _Pending(
                    "overflow_risk",
                    module,
                    "(outputs)",
                    "forward",
                    self._step,
                    dtype,
                    {"absmax": _f(m)},
                    _overflow_grade(self.target),
                )
            )
        self._absmax.clear()
        if not self._pending:
            return
        flat = [t.reshape(()) for p in self._pending for t in p.stats.values()]
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(flat):
            by_device.setdefault(t.device, []).append(i)
        values: list[float] = [0.0] * len(flat)
        for idx in by_device.values():
            for i, v in zip(idx, torch.stack([flat[i] for i in idx]).cpu().tolist()):
                values[i] = v
        k = 0
        for p in self._pending:
            stats = {}
            for key in p.stats:
                stats[key] = values[k]
                k += 1
            graded = p.grade(stats)
            if graded is None:
                continue
            severity, message, evidence = graded
            evidence = {"dtype": str(p.dtype).removeprefix("torch."), **evidence}
            merge(
                self.findings,
                Finding(
                    p.code,
                    severity,
                    p.module,
                    p.op,
                    p.phase,
                    p.step,
                    message,
                    evidence,
                    FIXES[p.code],
                ),
            )
        self._pending.clear()
        self._prov = {k: v for k, v in self._prov.items() if v[0]() is not None}


def _guarded(node: _Node) -> bool:
    """A value kept away from 0: x + eps, x.clamp(min=...), a softplus/exp/sigmoid output."""
    node = node.unscaled()
    if node.op in ("aten.add", "aten.clamp", "aten.clamp_min", "aten.softplus"):
        return node.op != "aten.add" or bool(node.numbers) or len(node.ins) == 1
    return False


def _zero_severity(zeros: float, smallest: float, warn_below: float, present: bool) -> str | None:
    """The grade of a value that must stay away from 0 (a divisor, a log's or a sqrt's input):
    error when it was exactly 0, warning below ``warn_below``, info when the pattern is the
    risky one (``present``) with headroom, else nothing to report."""
    if zeros > 0:
        return "error"
    if smallest < warn_below:
        return "warning"
    return "info" if present else None


def _exponent_grade(
    dtypes: list[torch.dtype], what: str
) -> Callable[[dict[str, float]], tuple[str, str, dict[str, Any]]]:
    """The grade of an unshifted exponent (naive softmax / logsumexp): its largest value
    against each dtype's overflow point ln(max); an error once it overflowed."""

    def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]]:
        m = s["max_exponent"]
        points = {str(d).removeprefix("torch."): exp_overflow_point(d) for d in dtypes}
        worst = min(points.values())
        ev = {
            "max_exponent": m,
            "overflow_at": points,
            "headroom": worst - m,
            "nonfinite_outputs": int(s["nonfinite"]),
        }
        if s["nonfinite"] > 0 or m >= exp_overflow_point(dtypes[0]):
            sev = "error"
        elif m >= worst - THRESHOLDS["exp_margin"]:
            sev = "warning"
        else:
            sev = "info"
        msg = (
            f"{what} reached {m:.4g}, {worst - m:.3g} below the overflow point {worst:.4g} "
            f"({min(points, key=points.get)})"
        )
        return sev, msg, ev

    return grade


def _underflow_grade(
    target: torch.dtype, tiny: float
) -> Callable[[dict[str, float]], tuple[str, str, dict[str, Any]] | None]:
    def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]] | None:
        share = s["flushed"] / s["nonzero"] if s["nonzero"] else 0.0
        name = str(target).removeprefix("torch.")
        ev = {
            "share": share,
            "elements": int(s["flushed"]),
            "nonzero": int(s["nonzero"]),
            "smallest_subnormal": tiny,
        }
        if share > THRESHOLDS["underflow_warning"]:
            sev = "warning"
        elif share > THRESHOLDS["underflow_info"]:
            sev = "info"
        else:
            return None
        return (
            sev,
            (
                f"{WHAT['underflow']}: {100 * share:.2g}% of the nonzero gradient elements "
                f"would flush to zero in {name} (below {tiny:.3g} after the loss scale)"
            ),
            ev,
        )

    return grade


def _overflow_grade(
    target: torch.dtype | None,
) -> Callable[[dict[str, float]], tuple[str, str, dict[str, Any]] | None]:
    def grade(s: dict[str, float]) -> tuple[str, str, dict[str, Any]] | None:
        assert target is not None
        top = float(torch.finfo(target).max)
        m = s["absmax"]
        name = str(target).removeprefix("torch.")
        ev = {"absmax": m, "dtype_max": top, "factor": top / m if m else float("inf")}
        if m != m or m == float("inf"):
            return None  # already non-finite: the pattern or the NaN triage names the origin
        if m >= top / THRESHOLDS["overflow_factor"]:
            sev = "warning"
        else:
            return None
        return (
            sev,
            (
                f"{WHAT['overflow_risk']}: an output reached |{m:.4g}|, within "
                f"{top / m if m else 0:.3g}x of {name}'s max {top:.6g}"
            ),
            ev,
        )

    return grade


__all__ = ["PatternDetector"]
