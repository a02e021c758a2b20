"""The precision audit: each module's error under the target precision's autocast against an
fp32 reference, split into local and inherited error, and a verified keep-in-fp32 list.

On one batch, at the current weights, with the same RNG state and buffers for every pass
(both restored afterwards, so the training step that follows sees what it would have seen):

1. **Reference**: forward and backward in fp32 (TF32 off); forward hooks keep each module's
   inputs and output, and every parameter's gradient is kept.
2. **Target**: forward and backward under ``torch.autocast(target)`` (fp16: the loss scaled
   by 2¹⁶ and the gradients unscaled, as a GradScaler would). Each module's output is compared
   with the reference's as it is produced (only the reference is kept), and the ops autocast
   left in low precision although they are sensitive (``sub``, ``div``, ``mean``, ``var``,
   ``sqrt``, ``sigmoid``, ...: not on its fp32 list) are counted by module.
3. **Local**: each module that owns parameters or has no children, run alone under the target
   autocast on its reference inputs rounded to the dtypes it received in the target pass (no
   gradient): its own error, not what it inherited.

SQNR (dB) = 10·log10(Σ ref² / Σ (ref − x)²), in float64 over the whole tensor (all outputs of a
module, all its own parameters' gradients); ``inf`` when bitwise equal, null when not
measured (local: a container module without parameters of its own). Cosine similarity is not
used: it stays above 0.9999 where SQNR tells 27 dB from 57 dB.

**Keep-list**: the modules whose local SQNR is an outlier — ``outlier_db`` below the median of
the measured modules, or under ``floor_db`` — worst first. If any, the target pass is re-run
with them outside autocast (their forward under ``autocast(enabled=False)`` on fp32 inputs),
adding one candidate at a time, at most ``max_verify`` runs, until the loss drift (relative
to the reference loss) is within ``loss_tolerance`` or no candidate is left; the before/after
drifts (loss and the global gradient SQNR) are reported as measured.

Cost per audited batch: two forward+backward passes, one forward per measured module, and
the verification runs; memory: the reference's module inputs and outputs (fp32) and one copy
of the gradients.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradoctor.monitors.op_scope import ModuleScope, OpWatch, op_info, tensors
from gradoctor.training.batches import compute_loss

# ops autocast runs in the low precision although they lose accuracy there (not on its fp32
# list: "if an op is unlisted, we assume it's numerically stable in float16")
SENSITIVE_OPS = frozenset(
    {
        "aten.sub",
        "aten.rsub",
        "aten.div",
        "aten.mean",
        "aten.var",
        "aten.std",
        "aten.var_mean",
        "aten.sqrt",
        "aten.rsqrt",
        "aten.sigmoid",
        "aten.reciprocal",
        "aten.sum",
        "aten.cumsum",
        "aten.prod",
        "aten.log",
        "aten.exp",
    }
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionOptions:
    """``target``: bf16 | fp16; ``outlier_db``: a module whose local SQNR is this far below
    the median is a keep-list candidate; ``floor_db``: so is one below this; ``loss_tolerance``
    and ``grad_tolerance_db``: what "back within tolerance of the reference" means (relative
    loss drift at most, global gradient SQNR at least); ``max_verify``: re-runs at most."""

    target: str = "bf16"
    outlier_db: float = 10.0
    floor_db: float = 20.0
    loss_tolerance: float = 1e-3
    grad_tolerance_db: float = 20.0
    max_verify: int = 3


@dataclass
class ModulePrecision:
    name: str
    type: str
    activation_sqnr_db: float | None = None
    grad_sqnr_db: float | None = None
    local_activation_sqnr_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PrecisionReport:
    """The ``precision`` section of ``audit``'s JSON (see the module docstring)."""

    reference: str
    target: str
    modules: list[ModulePrecision]
    keep_fp32: list[str]
    keep_fp32_verified: dict[str, Any]
    loss_drift: float
    grad_sqnr_db: float | None
    low_precision_ops: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "target": self.target,
            "loss_drift": self.loss_drift,
            "grad_sqnr_db": self.grad_sqnr_db,
            "modules": [m.to_dict() for m in self.modules],
            "keep_fp32": self.keep_fp32,
            "keep_fp32_verified": self.keep_fp32_verified,
            "low_precision_ops": self.low_precision_ops,
            "notes": self.notes,
        }


class _Sqnr:
    """Σ ref² and Σ (ref − x)² accumulated in float64 over several tensors."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, ref: torch.Tensor, x: torch.Tensor) -> None:
        r, y = ref.detach().to(torch.float64), x.detach().to(torch.float64)
        if r.shape != y.shape:
            return
        finite = torch.isfinite(r) & torch.isfinite(y)
        self.signal += float((r[finite] ** 2).sum())
        self.noise += float(((r - y)[finite] ** 2).sum()) + float((~finite).sum()) * 1e300

    @property
    def db(self) -> float | None:
        """inf when bitwise equal, None when there was nothing to compare."""
        if self.noise == 0.0:
            return math.inf if self.signal > 0.0 else None
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


def _floats(obj: Any) -> list[torch.Tensor]:
    return [t for t in tensors(obj) if t.is_floating_point()]


def _to32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to32(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _to32(v) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _fp32_modules(model: nn.Module, names: list[str], device: torch.device) -> Iterator[None]:
    """Run ``names``' forwards outside autocast, on fp32 inputs (their instance ``forward``
    is replaced for the duration, then removed)."""
    modules = dict(model.named_modules())
    patched = []
    for name in names:
        module = modules["" if name == "(root)" else name]
        original = module.forward

        def forward(*args: Any, _f: Any = original, **kwargs: Any) -> Any:
            with torch.autocast(device.type, enabled=False):
                return _f(*_to32(args), **_to32(kwargs))

        module.forward = forward  # type: ignore[method-assign]
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class PrecisionAudit:
    """Measures one batch (module docstring). ``loss_fn`` and the batch contract are the
    step's (``compute_loss``)."""

    def __init__(
        self, model: nn.Module, loss_fn: Any, device: torch.device, options: PrecisionOptions
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.device = device
        self.options = options
        self.dtype = DTYPES[options.target]
        self.names = {m: (n or "(root)") for n, m in model.named_modules()}
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    # ---- passes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _isolated(self) -> Iterator[None]:
        """The same RNG state at the start of every pass; RNG, buffers, gradients and
        grad-mode state put back afterwards."""
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        grads = [(p, p.grad) for _, p in self.params]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._rng = torch.get_rng_state()
            self._cuda_rng = torch.cuda.get_rng_state(self.device) if devices else None
            try:
                yield
            finally:
                with torch.no_grad():
                    for b, saved in buffers:
                        b.copy_(saved)
                for p, g in grads:
                    p.grad = g

    def _reset(self) -> None:
        torch.set_rng_state(self._rng)
        if self._cuda_rng is not None:
            torch.cuda.set_rng_state(self._cuda_rng, self.device)
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)
        for _, p in self.params:
            p.grad = None

    def _pass(
        self,
        batch: Any,
        low: bool,
        keep: list[str] | None = None,
        on_output: Any = None,
        watch: Any = None,
    ) -> tuple[float, list[torch.Tensor | None]]:
        """One forward+backward: (loss, unscaled gradients in ``self.params`` order)."""
        self._reset()
        hooks = []
        if on_output is not None:
            for m in self.names:
                hooks.append(m.register_forward_hook(on_output, with_kwargs=True))
        scale = 2.0**16 if low and self.dtype == torch.float16 else 1.0
        try:
            ctx = (
                torch.autocast(self.device.type, dtype=self.dtype)
                if low
                else contextlib.nullcontext()
            )
            keep_ctx = (
                _fp32_modules(self.model, keep or [], self.device)
                if low
                else contextlib.nullcontext()
            )
            with keep_ctx, ctx, watch or contextlib.nullcontext():
                loss = compute_loss(self.model, batch, self.loss_fn)
            (loss.float() * scale).backward()
        finally:
            for h in hooks:
                h.remove()
        grads = [
            p.grad.detach().float() / scale if p.grad is not None else None for _, p in self.params
        ]
        return float(loss.detach().float()), grads

    def _grad_sqnr(
        self, ref: list[torch.Tensor | None], low: list[torch.Tensor | None]
    ) -> float | None:
        acc = _Sqnr()
        for r, x in zip(ref, low):
            if r is not None and x is not None:
                acc.add(r, x)
        return acc.db

    # ---- the measurement --------------------------------------------------------------------
    def run(self, batch: Any) -> PrecisionReport:
        fp32_ctx = _tf32_off()
        with fp32_ctx, self._isolated():
            self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
            ref_out: dict[str, list[torch.Tensor]] = {}
            ref_in: dict[str, tuple[tuple, dict]] = {}

            def keep_ref(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
                name = self.names[module]
                if name not in ref_out:
                    ref_out[name] = [t.detach().float().clone() for t in _floats(out)]
                    ref_in[name] = (
                        tuple(
                            a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args
                        ),
                        {
                            k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                            for k, v in kwargs.items()
                        },
                    )

            ref_loss, ref_grads = self._pass(batch, low=False, on_output=keep_ref)
            act: dict[str, _Sqnr] = {}

            low_in: dict[str, list[torch.dtype]] = {}

            def compare(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
                name = self.names[module]
                if name in act or name not in ref_out:
                    return
                low_in[name] = [t.dtype for t in _floats((args, kwargs))]
                acc = act[name] = _Sqnr()
                for r, x in zip(ref_out[name], _floats(out)):
                    acc.add(r, x)

            scope = ModuleScope(self.model, track_backward=False)
            low_ops: dict[tuple[str, str, str], int] = {}

            def watch_op(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
                out = func(*args, **kwargs)
                name = op_info(func).short
                if name in SENSITIVE_OPS:
                    ins = [t for t in tensors((args, kwargs)) if t.is_floating_point()]
                    if ins and all(t.dtype == self.dtype for t in ins):
                        key = (scope.current(), name, str(self.dtype).removeprefix("torch."))
                        low_ops[key] = low_ops.get(key, 0) + 1
                return out

            scope.attach()
            scope.begin_forward()
            try:
                low_loss, low_grads = self._pass(
                    batch, low=True, on_output=compare, watch=OpWatch(watch_op)
                )
            finally:
                scope.detach()
            local = self._local(ref_in, ref_out, low_in)
            rows = self._rows(act, local, ref_grads, low_grads)
            drift = abs(low_loss - ref_loss) / max(abs(ref_loss), 1e-12)
            grad_db = self._grad_sqnr(ref_grads, low_grads)
            keep, verified, notes = self._keep_list(
                batch, rows, ref_loss, ref_grads, drift, grad_db
            )
        return PrecisionReport(
            reference="fp32",
            target=self.options.target,
            modules=rows,
            keep_fp32=keep,
            keep_fp32_verified=verified,
            loss_drift=drift,
            grad_sqnr_db=grad_db,
            low_precision_ops=[
                {"module": m, "op": op, "dtype": dt, "count": n}
                for (m, op, dt), n in sorted(low_ops.items(), key=lambda kv: -kv[1])
            ],
            notes=notes,
        )

    def _local(
        self,
        ref_in: dict[str, tuple[tuple, dict]],
        ref_out: dict[str, list[torch.Tensor]],
        low_in: dict[str, list[torch.dtype]],
    ) -> dict[str, float | None]:
        """Each leaf or parameter-owning module alone under the target autocast, on its
        reference inputs rounded to the dtypes it received in the target pass (a module after
        a bf16 matmul computes in bf16), without gradient."""
        out: dict[str, float | None] = {}
        for module, name in self.names.items():
            has_own = any(True for _ in module.parameters(recurse=False))
            if name not in ref_in or not (has_own or not any(True for _ in module.children())):
                continue
            args, kwargs = _cast_like(ref_in[name], low_in.get(name, []))
            self._reset()
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype):
                try:
                    y = module(*args, **kwargs)
                except Exception:  # a module that cannot run alone (state from its parent)
                    continue
            acc = _Sqnr()
            for r, x in zip(ref_out[name], _floats(y)):
                acc.add(r, x)
            out[name] = acc.db
        return out

    def _rows(
        self,
        act: dict[str, _Sqnr],
        local: dict[str, float | None],
        ref_grads: list[torch.Tensor | None],
        low_grads: list[torch.Tensor | None],
    ) -> list[ModulePrecision]:
        by_owner: dict[str, _Sqnr] = {}
        for (n, _), r, x in zip(self.params, ref_grads, low_grads):
            owner = n.rpartition(".")[0] or "(root)"
            if r is not None and x is not None:
                by_owner.setdefault(owner, _Sqnr()).add(r, x)
        rows = []
        for module, name in self.names.items():
            if name not in act and name not in local:
                continue
            rows.append(
                ModulePrecision(
                    name=name,
                    type=type(module).__name__,
                    activation_sqnr_db=act[name].db if name in act else None,
                    grad_sqnr_db=by_owner[name].db if name in by_owner else None,
                    local_activation_sqnr_db=local.get(name),
                )
            )
        rows.sort(key=lambda r: _rank_key(r.local_activation_sqnr_db))
        return rows

    def _keep_list(
        self,
        batch: Any,
        rows: list[ModulePrecision],
        ref_loss: float,
        ref_grads: list[torch.Tensor | None],
        drift: float,
        grad_db: float | None,
    ) -> tuple[list[str], dict[str, Any], list[str]]:
        o = self.options
        measured = [r for r in rows if r.local_activation_sqnr_db is not None]
        notes: list[str] = []
        finite = [r for r in measured if math.isfinite(r.local_activation_sqnr_db)]  # type: ignore[arg-type]
        if not finite:
            return [], {}, ["no module differed locally: nothing to keep in fp32"]
        median = statistics.median(r.local_activation_sqnr_db for r in measured)  # type: ignore[misc]
        candidates = [
            r.name
            for r in measured
            if r.local_activation_sqnr_db < min(median - o.outlier_db, math.inf)  # type: ignore[operator]
            or r.local_activation_sqnr_db < o.floor_db  # type: ignore[operator]
        ]
        before = {"loss_drift": drift, "grad_sqnr_db": grad_db}
        tolerance = {"loss_drift": o.loss_tolerance, "grad_sqnr_db": o.grad_tolerance_db}

        def within(d: float, g: float | None) -> bool:
            return d <= o.loss_tolerance and (g is None or g >= o.grad_tolerance_db)

        if within(drift, grad_db):
            notes.append(
                f"loss drift {drift:.2e} and gradient SQNR {_fmt_db(grad_db)} dB are within the "
                f"tolerance ({o.loss_tolerance:g}, {o.grad_tolerance_db:g} dB): no keep-list needed"
            )
            return (
                [],
                {
                    "before": before,
                    "after": None,
                    "runs": 0,
                    "within_tolerance": True,
                    "tolerance": tolerance,
                },
                notes,
            )
        if not candidates:
            notes.append(
                f"no module's local SQNR stands out (median {median:.1f} dB; a candidate is "
                f"{o.outlier_db:g} dB below it or under {o.floor_db:g} dB): the drift is spread "
                "over the model, no keep-list"
            )
            return (
                [],
                {
                    "before": before,
                    "after": None,
                    "runs": 0,
                    "within_tolerance": False,
                    "tolerance": tolerance,
                },
                notes,
            )
        keep: list[str] = []
        after: dict[str, Any] | None = None
        for name in candidates[: max(o.max_verify, 0)]:
            keep.append(name)
            loss, grads = self._pass(batch, low=True, keep=keep)
            after = {
                "loss_drift": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
                "grad_sqnr_db": self._grad_sqnr(ref_grads, grads),
            }
            if within(after["loss_drift"], after["grad_sqnr_db"]):
                break
        ok = after is not None and within(after["loss_drift"], after["grad_sqnr_db"])
        return (
            keep,
            {
                "before": before,
                "after": after,
                "runs": len(keep),
                "within_tolerance": ok,
                "tolerance": tolerance,
            },
            notes,
        )


def _fmt_db(db: float | None) -> str:
    return "-" if db is None else f"{db:.1f}"


def _cast_like(inputs: tuple[tuple, dict], dtypes: list[torch.dtype]) -> tuple[tuple, dict]:
    """The floating tensors of ``(args, kwargs)`` cast, in order, to ``dtypes``."""
    it = iter(dtypes)

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            dtype = next(it, None)
            return x.to(dtype) if dtype is not None else x
        return x

    args, kwargs = inputs
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _rank_key(db: float | None) -> float:
    return math.inf if db is None else db


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """The fp32 reference without TF32 (cuDNN and cuBLAS); restored afterwards."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


__all__ = [
    "DTYPES",
    "SENSITIVE_OPS",
    "ModulePrecision",
    "PrecisionAudit",
    "PrecisionOptions",
    "PrecisionReport",
]
