"""The three attribution methods, on Captum, with what Captum does not do.

- ``saliency``: the input gradient of the explained scalar (Captum ``Saliency``, signed).
  One forward and one backward per example.
- ``smoothgrad``: the mean input gradient over ``samples`` noisy copies x + N(0, σ²), σ =
  ``noise`` × (max − min) of each example (Smilkov et al. 2017), signed, with its Monte-Carlo
  standard error per feature (std / √N). The gradients come from Captum's ``Saliency``; the
  averaging is ours because Captum's ``NoiseTunnel`` returns only the mean, and the standard
  error needs the per-sample second moment (its ``vargrad`` would be a second full pass).
  ``samples`` gradient evaluations per example.
- ``integrated_gradients``: Captum ``IntegratedGradients`` with Gauss–Legendre quadrature
  (never ``riemann_trapezoid``, whose weights sum to 1 − 1/n: completeness off by exactly 1/n),
  ``n_steps="auto"``: 8, 16, 32, ... up to ``max_steps`` per example until |Σ attributions −
  (F(x) − F(x'))| ≤ ``tolerance`` · |F(x) − F(x')| (with an absolute floor 1e-6 · max(1, |F(x)|)
  for F(x) ≈ F(x')); an example still above at the cap is flagged (``converged`` false). An
  example whose error is still above 25% and has not halved from 8 to 64 steps is stopped
  there and flagged
  ``stalled``: quadrature error falls with n on a smooth path, so the score jumps along it
  (e.g. a scale-invariant normalisation after the first layer with a zero baseline: F is
  constant for every α > 0 and different at 0) and no step count will do; another baseline
  will.
  Each round runs only the examples not yet converged; n gradient evaluations per example and
  round, plus two forwards for the completeness check.

Memory: every method runs its rows (noisy copies, interpolation steps) in chunks of
``chunks.RowBudget`` rows, halved and retried on out-of-memory; the result is the unchunked
one up to float summation order.

Token models are explained in embedding space (``api.embedding_scalar_fn``): the inputs are
the embedding layer's outputs and F replaces that layer's output by them — Integrated
Gradients there is what Captum's ``LayerIntegratedGradients`` computes at the layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import IntegratedGradients, Saliency

from gradoctor.attribution.chunks import RowBudget
from gradoctor.attribution.scalar import pick

ScoresFn = Callable[..., torch.Tensor]  # F(x, *extra) -> [rows, C] or [rows]


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx.to(t.device)]


def _extra(extra: torch.Tensor | None) -> tuple | None:
    return None if extra is None else (extra,)


FIRST_STEPS = 8
STALL_STEPS = 64
STALL_ERROR = 0.25


@dataclass
class Completeness:
    """Per example: F(x), F(x'), Σ attributions, |Σ − (F(x) − F(x'))| / |F(x) − F(x')|."""

    f_input: list[float]
    f_baseline: list[float]
    attribution_sum: list[float]
    relative_error: list[float]
    n_steps: list[int]
    converged: list[bool]
    stalled: list[bool] = field(default_factory=list)

    def to_dict(self, i: int | None = None) -> dict[str, Any]:
        keys = (
            "f_input",
            "f_baseline",
            "attribution_sum",
            "relative_error",
            "n_steps",
            "converged",
            "stalled",
        )
        if i is None:
            return {k: getattr(self, k) for k in keys}
        return {k: getattr(self, k)[i] for k in keys}


@dataclass
class MethodResult:
    """``attributions``: the inputs' shape (or the embedding output's, for tokens);
    ``evaluations``: gradient evaluations per example; ``stderr``: SmoothGrad's Monte-Carlo
    standard error per feature; ``completeness``: IG's."""

    method: str
    attributions: torch.Tensor
    evaluations: list[int]
    stderr: torch.Tensor | None = None
    completeness: Completeness | None = None
    notes: list[str] = field(default_factory=list)


def _gradients(
    f: ScoresFn, x: torch.Tensor, target: torch.Tensor | None, extra: torch.Tensor | None
) -> torch.Tensor:
    """d F[target] / d x for every row of ``x`` (Captum ``Saliency``, signed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
        return (
            Saliency(f)
            .attribute(x.detach(), target=target, abs=False, additional_forward_args=_extra(extra))
            .detach()
        )


def saliency(
    f: ScoresFn,
    x: torch.Tensor,
    budget: RowBudget,
    target: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
) -> MethodResult:
    """The input gradient, one forward+backward per example."""

    def run(idx: torch.Tensor) -> tuple[torch.Tensor]:
        return (_gradients(f, x[idx], _rows(target, idx), _rows(extra, idx)),)

    (grads,) = budget.map_examples(run, x.shape[0], 1)
    return MethodResult("saliency", grads, [1] * x.shape[0])


def smoothgrad(
    f: ScoresFn,
    x: torch.Tensor,
    budget: RowBudget,
    target: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    generator: torch.Generator | None = None,
) -> MethodResult:
    """Mean gradient over ``samples`` noisy copies and its standard error (module docstring).
    Noise is drawn from ``generator`` (default: seeded 0), never from the global RNG."""
    gen = generator or torch.Generator(device="cpu").manual_seed(0)
    b = x.shape[0]
    flat = x.reshape(b, -1).float()
    sigma = (noise * (flat.amax(1) - flat.amin(1))).reshape((b,) + (1,) * (x.dim() - 1))
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < samples:
        k = min(samples - done, max(1, budget.rows // max(1, b)))
        # one draw per sample: the same noise whatever the chunk size
        eps = torch.stack([torch.randn(x.shape, generator=gen) for _ in range(k)]).to(x.device)
        noisy = (x.unsqueeze(0) + eps * sigma.unsqueeze(0).to(x.device)).reshape(
            (k * b, *x.shape[1:])
        )
        tiled_t = target.repeat(k) if target is not None else None
        tiled_e = extra.repeat((k,) + (1,) * (extra.dim() - 1)) if extra is not None else None

        def run(
            idx: torch.Tensor,
            noisy: torch.Tensor = noisy,
            t: torch.Tensor | None = tiled_t,
            e: torch.Tensor | None = tiled_e,
        ) -> tuple[torch.Tensor]:
            return (_gradients(f, noisy[idx], _rows(t, idx), _rows(e, idx)),)

        (grads,) = budget.map_examples(run, k * b, 1)
        grads = grads.float().reshape((k, *x.shape))
        total += grads.sum(0)
        total_sq += (grads**2).sum(0)
        done += k
    mean = total / samples
    var = (total_sq / samples - mean**2).clamp_min(0) * (samples / max(samples - 1, 1))
    return MethodResult("smoothgrad", mean, [samples] * b, stderr=(var / samples).sqrt())


def _ig_round(
    ig: Any,
    x: torch.Tensor,
    baseline: torch.Tensor,
    n: int,
    budget: RowBudget,
    target: torch.Tensor | None,
    extra: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum IG at ``n`` Gauss–Legendre points, chunked by examples to the row budget."""

    def run(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = max(len(idx), min(budget.rows, n * len(idx)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
            attr, delta = ig.attribute(
                x[idx].detach(),
                baselines=baseline[idx].detach(),
                target=_rows(target, idx),
                additional_forward_args=_extra(_rows(extra, idx)),
                n_steps=n,
                method="gausslegendre",
                internal_batch_size=rows,
                return_convergence_delta=True,
            )
        return attr.detach(), delta.detach()

    return budget.map_examples(run, x.shape[0], n)


def integrated_gradients(
    f: ScoresFn,
    x: torch.Tensor,
    baseline: torch.Tensor,
    budget: RowBudget,
    target: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    *,
    n_steps: int | str = "auto",
    tolerance: float = 0.01,
    max_steps: int = 512,
) -> MethodResult:
    """Integrated Gradients (module docstring)."""
    ig = IntegratedGradients(f)
    args = () if extra is None else (extra,)
    with torch.no_grad():
        f_x = pick(f(x, *args), target).detach().float()
        f_b = pick(f(baseline, *args), target).detach().float()
    gap = (f_x - f_b).abs()
    floor = 1e-6 * torch.clamp(f_x.abs(), min=1.0)
    attrs: torch.Tensor | None = None
    steps = [0] * x.shape[0]
    errors = [math.inf] * x.shape[0]
    todo = torch.arange(x.shape[0])
    n = FIRST_STEPS if n_steps == "auto" else int(n_steps)
    cap = max_steps if n_steps == "auto" else int(n_steps)
    evaluations = [0] * x.shape[0]
    first_error: dict[int, float] = {}
    stalled = [False] * x.shape[0]
    while len(todo):
        a, delta = _ig_round(
            ig, x[todo], baseline[todo], n, budget, _rows(target, todo), _rows(extra, todo)
        )
        if attrs is None:
            attrs = torch.zeros((x.shape[0],) + tuple(a.shape[1:]), dtype=a.dtype, device=a.device)
        attrs[todo] = a
        err = delta.abs().float().cpu() / torch.maximum(gap[todo].cpu(), floor[todo].cpu())
        keep = []
        for j, i in enumerate(todo.tolist()):
            steps[i], errors[i] = n, float(err[j])
            evaluations[i] += n
            first_error.setdefault(i, errors[i])
            ok = float(delta[j].abs()) <= max(tolerance * float(gap[i]), float(floor[i]))
            # quadrature error falls with n on a smooth path; one that does not fall by half
            # from 8 to 64 steps, and is still large, is a jump along the path (no step count
            # will do)
            if (
                not ok
                and n >= STALL_STEPS
                and errors[i] > STALL_ERROR
                and errors[i] > 0.5 * first_error[i]
            ):
                stalled[i] = True
            elif not ok and n < cap and n_steps == "auto":
                keep.append(i)
        todo = torch.tensor(keep, dtype=torch.long)
        n *= 2
    assert attrs is not None
    sums = attrs.reshape(attrs.shape[0], -1).sum(1).float().cpu()
    converged = [
        abs(float(sums[i]) - float(f_x[i] - f_b[i]))
        <= max(tolerance * float(gap[i]), float(floor[i]))
        for i in range(x.shape[0])
    ]
    comp = Completeness(
        f_input=f_x.cpu().tolist(),
        f_baseline=f_b.cpu().tolist(),
        attribution_sum=sums.tolist(),
        relative_error=errors,
        n_steps=steps,
        converged=converged,
        stalled=stalled,
    )
    return MethodResult("ig", attrs, [e + 2 for e in evaluations], completeness=comp)


__all__ = ["Completeness", "MethodResult", "integrated_gradients", "saliency", "smoothgrad"]
