"""``hessian_spectrum``: eigenvalues, trace, density and per-layer curvature of a model's loss.

The loss is the mean of ``loss_fn(model, batch)`` over ``batches``; the Hessian H is taken
w.r.t. every trainable parameter (P of them, flattened in ``named_parameters()`` order). The
model stays in its mode (train mode: BatchNorm uses batch statistics) except dropout, which
is disabled; buffers, modes, ``requires_grad`` and ``.grad`` are restored exactly.

Cost, in HVPs (each a full pass over ``batches``, ≈2.5-4 gradients on CPU), totalled in the
result's ``hvps``:

- eigenvalues: ≈ 20-50 + ``top_k`` (exactly ``max_hvps`` when given);
- trace: ``trace_hvps``; density: ``density_steps · density_probes``;
- per-layer: ≈ Σ over blocks of min(n, ``trace_hvps`` + 20-40).

Plus two forward passes over ``batches`` for the determinism check.

Across processes (``process_group``; ``ranks.py``): ``batches`` is this rank's share and the
loss is the mean over every rank's batches (each batch weighs the same, wherever it is).
Each HVP is one ``all_reduce`` of P + 5 float64 values (this rank's summed HVPs, its batch
count, a lockstep check and a failure flag), the determinism check one of 6; every rank gets
bitwise the same operator output and runs the same Lanczos/eigsh/Hutch++ iterations, so the
result is the same on every rank and equals the one-process result on all the batches up to
the order of the batch sum (float64: ≤1e-12 relative, measured). Errors are raised on every
rank together (no rank waits in a collective the others left).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from gradoctor.errors import UsageError, UserCodeError
from gradoctor.hessian.density import slq_density
from gradoctor.hessian.eigen import top_eigenpairs
from gradoctor.hessian.functional import FunctionalLoss, LossFn, ParamLayout
from gradoctor.hessian.hvp import HessianVectorProduct
from gradoctor.hessian.model_state import measurement_state
from gradoctor.hessian.operator import HessianOperator
from gradoctor.hessian.per_layer import block_indices, layer_curvature
from gradoctor.hessian.ranks import RankSum, rank_sum
from gradoctor.hessian.result import CurvatureResult, LayerCurvature
from gradoctor.hessian.trace import MIN_BUDGET, estimate_trace


def hessian_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    *,
    top_k: int = 1,
    trace: bool = False,
    trace_hvps: int = 100,
    density: bool = False,
    density_steps: int = 80,
    density_probes: int = 5,
    per_layer: bool = False,
    tol: float = 1e-6,
    max_hvps: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    preconditioner: torch.Tensor | None = None,
    v0: torch.Tensor | None = None,
    rayleigh: dict[str, torch.Tensor] | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> CurvatureResult:
    """Curvature of the mean loss over ``batches`` (a list; each item goes to ``loss_fn``).

    ``top_k`` largest algebraic eigenvalues by Lanczos: ``eigsh`` to residual ``tol``, or,
    with ``max_hvps``, exactly that many HVPs (``max_hvps - top_k`` fully reorthogonalised
    Lanczos steps; see ``eigen.py``); ``trace``: Hutch++ with ``trace_hvps`` HVPs;
    ``density``: SLQ with ``density_steps`` Lanczos steps x ``density_probes`` probes;
    ``per_layer``: each module's block (top eigenvalue; trace with ``trace_hvps`` HVPs).
    ``dtype`` runs the HVPs in that dtype (model tensors and floating batch tensors are cast;
    default: the parameters' own). ``preconditioner`` ([P], positive, e.g.
    ``adam_preconditioner``) measures D^-1/2 H D^-1/2 instead of H, for every quantity.
    ``v0`` ([P]) starts Lanczos (a previous result's ``eigenvectors[:, 0]``: a warm start).
    ``rayleigh`` ({name: [P] direction}) adds ``result.rayleigh[name]`` = uᵀ A u / uᵀu for the
    operator A measured, one HVP each; u is the direction itself, or D^-1/2·direction when
    preconditioned (a preconditioned step moves along D^-1 g, i.e. D^-1/2 g in the coordinates
    of D^-1/2 H D^-1/2): with the gradient, the batch sharpness gᵀHg/‖g‖².
    ``seed`` fixes every random probe. ``process_group`` (e.g.
    ``torch.distributed.group.WORLD``; every rank calls with the same arguments but its own
    ``batches``, possibly none) measures the mean loss over all ranks' batches (module
    docstring); ``result.batches`` is then the total (SyncBatchNorm in train mode is refused:
    its forward synchronises). Raises UsageError for bad arguments,
    UserCodeError when the loss cannot be evaluated or differentiated twice, or is random.
    """
    ranks = rank_sum(process_group)
    batches = _check_arguments(
        batches,
        top_k,
        trace,
        per_layer,
        trace_hvps,
        density_steps,
        density_probes,
        max_hvps,
        empty_ok=ranks is not None,
    )
    if ranks is not None:
        _check_no_sync_batchnorm(model, ranks)
    layout = ParamLayout.of(model, dtype)
    if top_k >= layout.size:
        raise UsageError(
            f"top_k={top_k} but the model has only P={layout.size} trainable parameters",
            hint=f"ask for fewer than {layout.size} eigenvalues (Lanczos needs top_k < P)",
        )
    # One stream per stage, so a stage's probes do not depend on which other stages run.
    eigen_rng, trace_rng, density_rng, layer_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    with measurement_state(model) as state:
        floss = FunctionalLoss(model, loss_fn, batches, layout, dtype)
        total_batches = _check_deterministic(floss, ranks)
        hvp = HessianVectorProduct(floss, ranks=ranks)
        op = HessianOperator(hvp, preconditioner=preconditioner)
        start = None if v0 is None else _start_vector(v0, layout.size)
        pairs = top_eigenpairs(op, top_k, tol=tol, rng=eigen_rng, v0=start, max_matvecs=max_hvps)
        notes = state.notes() + _convergence_notes(pairs.residuals, tol, max_hvps)
        result = CurvatureResult(
            eigenvalues=[float(x) for x in pairs.values],
            residuals=[float(x) for x in pairs.residuals],
            hvps=0,
            method=pairs.method,
            hvp_method=hvp.method.label,
            fallback=hvp.fallback,
            batches=total_batches,
            parameters=layout.size,
            precision=layout.precision(),
            notes=notes,
            eigenvectors=torch.from_numpy(np.ascontiguousarray(pairs.vectors)),
        )
        if trace:
            result.trace = estimate_trace(op, trace_hvps, trace_rng)
        if density:
            result.density = slq_density(
                op, steps=density_steps, probes=density_probes, rng=density_rng
            )
        if per_layer:
            result.per_layer = _per_layer(hvp, layout, preconditioner, trace_hvps, tol, layer_rng)
        if rayleigh:
            result.rayleigh = {name: _rayleigh(op, u) for name, u in rayleigh.items()}
        if preconditioner is not None:
            result.notes.append("preconditioned: every quantity is of D^-1/2 H D^-1/2")
        result.hvps = hvp.count
    return result


def _check_arguments(
    batches: Sequence[Any],
    top_k: int,
    trace: bool,
    per_layer: bool,
    trace_hvps: int,
    density_steps: int,
    density_probes: int,
    max_hvps: int | None,
    empty_ok: bool = False,
) -> list[Any]:
    problems = []
    try:
        batches = list(batches)
    except TypeError:
        problems.append(f"batches must be a list of batches, not {type(batches).__name__}")
        batches = []
    else:
        if not batches and not empty_ok:  # across ranks: checked on the total
            problems.append("batches is empty: the loss needs at least one batch")
    if top_k < 1:
        problems.append(f"top_k={top_k}: ask for at least one eigenvalue")
    if max_hvps is not None and max_hvps < 2 * top_k + 1:
        problems.append(
            f"max_hvps={max_hvps}: top_k={top_k} eigenpairs need at least 2·top_k + 1 = "
            f"{2 * top_k + 1} (top_k + 1 Lanczos steps, then one HVP per residual)"
        )
    if (trace or per_layer) and trace_hvps < MIN_BUDGET:
        problems.append(f"trace_hvps={trace_hvps}: Hutch++ needs at least {MIN_BUDGET}")
    if density_steps < 2 or density_probes < 1:
        problems.append(
            f"density needs density_steps >= 2 and density_probes >= 1 "
            f"(got {density_steps}, {density_probes})"
        )
    if problems:
        raise UsageError("; ".join(problems), hint="fix the arguments of hessian_spectrum")
    return batches


def _check_no_sync_batchnorm(model: nn.Module, ranks: RankSum) -> None:
    """SyncBatchNorm in train mode runs collectives inside its forward and backward: a rank
    with more batches than another would wait for forwards the other never runs. Refused up
    front, on every rank alike (the same model everywhere)."""
    sync = [
        n or type(m).__name__
        for n, m in model.named_modules()
        if isinstance(m, nn.SyncBatchNorm) and m.training
    ]
    if sync and ranks.world > 1:
        raise UsageError(
            f"SyncBatchNorm in train mode ({', '.join(sync[:3])}{' ...' if len(sync) > 3 else ''}) "
            "cannot be measured across ranks: it runs collectives inside its forward and "
            "backward, which the ranks' Hessian-vector products do not call in step",
            hint="measure on one process (process_group=None), or convert the model with "
            "per-rank BatchNorm for the measurement",
        )


def _check_deterministic(floss: FunctionalLoss, ranks: RankSum | None) -> int:
    """Two evaluations of the mean loss at the same parameters must agree bit for bit: a
    random loss has a random, asymmetric 'Hessian' and Lanczos on it is meaningless. Across
    ranks each rank compares its own batches' sums and one all-reduce gives every rank the
    same verdict. Returns the number of batches (over all ranks)."""
    if ranks is None:
        first, second = floss.mean_loss(), floss.mean_loss()
        if torch.equal(first, second):
            return len(floss.batches)
        _raise_random(first.item(), second.item(), rounding=_close(first.item(), second.item()))

    def local() -> torch.Tensor:
        first, second = floss.total_loss(), floss.total_loss()
        a, b = first.item(), second.item()
        differ = not torch.equal(first, second)
        far = differ and not _close(a, b)
        return torch.tensor([a, b, len(floss.batches), differ, far], dtype=torch.float64)

    a, b, count, differ, far = ranks.sum_local(local, 5, torch.device("cpu")).tolist()
    if count == 0:
        raise UsageError(
            f"batches is empty on all {ranks.world} ranks: the loss needs at least one batch",
            hint="give at least one rank a batch",
        )
    if differ:
        _raise_random(
            a / count,
            b / count,
            rounding=not far,
            where=f" on {int(differ)} of {ranks.world} ranks",
        )
    return int(count)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))  # rounding-level: kernels, not sampling


def _raise_random(a: float, b: float, *, rounding: bool, where: str = "") -> NoReturn:
    if rounding:
        hint = (
            "the difference is at rounding level: nondeterministic kernels (atomic adds, "
            "cuDNN autotuning), not sampling; call torch.use_deterministic_algorithms(True) "
            "(and set torch.backends.cudnn.benchmark = False) before measuring"
        )
    else:
        hint = (
            "nn.Dropout modules are disabled automatically, but functional dropout "
            "(F.dropout(..., training=True)), random augmentation or noise inside the model or "
            "loss_fn is not: make it depend on module.training, or move augmentation into the "
            "data and pass fixed batches"
        )
    raise UserCodeError(
        f"the loss is random{where}: two evaluations at the same parameters gave {a!r} and {b!r}",
        hint=hint,
    )


def _rayleigh(op: HessianOperator, direction: torch.Tensor) -> float:
    """uᵀ op u / uᵀu for the direction in the operator's coordinates (see ``rayleigh``);
    NaN for a zero or non-finite direction."""
    u = torch.as_tensor(direction).detach().reshape(-1).to("cpu", torch.float64).numpy()
    if u.size != op.size or not np.isfinite(u).all() or not u.any():
        return float("nan")
    if op.scale is not None:
        u = u * op.scale.numpy()
    return float(u @ op.matvec(u) / (u @ u))


def _start_vector(v0: torch.Tensor, size: int) -> np.ndarray:
    v = torch.as_tensor(v0).detach().reshape(-1).to("cpu", torch.float64).numpy()
    if v.size != size or not np.isfinite(v).all() or not v.any():
        raise UsageError(
            f"v0 must be a finite nonzero vector of length P={size} (got {v.size} entries)",
            hint="pass a previous result's eigenvectors[:, 0] for the same model",
        )
    return v


def _convergence_notes(residuals: np.ndarray, tol: float, max_hvps: int | None) -> list[str]:
    """A note when some pair's residual is above ``tol`` (ARPACK's own criterion)."""
    loose = [i + 1 for i, r in enumerate(residuals) if not r <= tol]
    if not loose:
        return []
    within = f" within max_hvps={max_hvps}" if max_hvps is not None else ""
    return [
        f"eigenpair(s) {loose} not converged to tol={tol:g}{within} (see residuals)"
        + ("; raise max_hvps" if max_hvps is not None else "")
    ]


def _per_layer(
    hvp: HessianVectorProduct,
    layout: ParamLayout,
    preconditioner: torch.Tensor | None,
    budget: int,
    tol: float,
    rng: np.random.Generator,
) -> dict[str, LayerCurvature]:
    return {
        name: layer_curvature(
            HessianOperator(hvp, preconditioner=preconditioner, indices=idx),
            budget=budget,
            tol=tol,
            rng=rng,
        )
        for name, idx in block_indices(layout).items()
    }
