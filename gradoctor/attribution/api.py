"""``gradoctor.explain(model, inputs, ...)``: one method's attributions for a batch, with its
guarantees checked (``methods``: completeness, standard error; ``sanity``; ``faithfulness``).

The explained scalar is ``scalar.scalar_fn``: the target class's score (``target=None``: the
predicted class), or what ``forward(model, x)`` returns. Integer inputs (token ids) are
explained in embedding space: the first ``nn.Embedding`` of the model gives the inputs'
embeddings, F replaces that layer's output with them, and the attributions are per embedding
component (``token_scores``: their sum per token). Attributions are computed in fp32 unless
``precision`` (bf16 | fp16) asks for autocast; then Integrated Gradients' completeness is
also measured in fp32 at the same steps and the result is marked ``precision_limited`` when
the autocast error exceeds twice the fp32 one.

Cost per example, in gradient evaluations: saliency 1; SmoothGrad ``samples``; Integrated
Gradients the steps of each doubling round (8 + 16 + ... until converged) plus two forwards;
the sanity check repeats the method once per parameterised module (on a copy of the model,
for the first 4 examples, IG at no more than 32 steps);
faithfulness 2 × 21 forwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradoctor.attribution.baselines import make_baseline
from gradoctor.attribution.chunks import RowBudget
from gradoctor.attribution.faithfulness import deletion
from gradoctor.attribution.methods import (
    MethodResult,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from gradoctor.attribution.sanity import SanityResult, cascading_randomisation
from gradoctor.attribution.scalar import Forward, check_target, logits_of, pick, scores_fn
from gradoctor.errors import UsageError

METHODS = ("saliency", "smoothgrad", "ig")
SANITY_STEPS = 32
SANITY_EXAMPLES = 4
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Explanation:
    """One method's explanation of a batch. ``attributions``: the inputs' shape (for token
    inputs: ``[B, T, D]`` at the embedding); ``token_scores``: ``[B, T]`` for token inputs;
    ``target``: ``[B]`` explained outputs (None for a scalar model); ``n_steps``: IG's per
    example; ``completeness``: IG's per-example {f_input, f_baseline, attribution_sum,
    relative_error, n_steps, converged}; ``stderr``: SmoothGrad's per feature;
    ``sanity``/``faithfulness``: their results; ``evaluations``: gradient evaluations per
    example; ``precision``: the autocast used (None: fp32)."""

    method: str
    attributions: torch.Tensor
    target: torch.Tensor | None
    n_steps: list[int] | None = None
    completeness: dict[str, Any] | None = None
    stderr: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None
    sanity: SanityResult | None = None
    faithfulness: dict[str, Any] | None = None
    evaluations: list[int] = field(default_factory=list)
    precision: str | None = None
    precision_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unconverged(self) -> list[int]:
        """Examples whose IG did not reach the tolerance by the step cap."""
        if not self.completeness:
            return []
        return [i for i, ok in enumerate(self.completeness["converged"]) if not ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target.tolist() if self.target is not None else None,
            "n_steps": self.n_steps,
            "completeness": self.completeness,
            "stderr_mean": float(self.stderr.mean()) if self.stderr is not None else None,
            "sanity": self.sanity.to_dict() if self.sanity is not None else None,
            "faithfulness": self.faithfulness,
            "evaluations": self.evaluations,
            "precision": self.precision,
            "precision_check": self.precision_check,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def embedding_layer(model: nn.Module) -> nn.Embedding | None:
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module
    return None


def embedding_forward(
    f: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """F as a function of ``layer``'s output: ``g(e, ids)`` runs the model on ``ids`` (one row
    per row of ``e``; Captum repeats them as it repeats ``e``) with the layer's output
    replaced by ``e``."""

    def g(e: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _m, _a, _o: e)
        try:
            return f(ids)
        finally:
            handle.remove()

    return g


def _autocast(precision: str | None, device: torch.device) -> Any:
    if precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    target: int | torch.Tensor | None = None,
    method: str = "ig",
    baseline: str | torch.Tensor | None = None,
    n_steps: int | str = "auto",
    tolerance: float = 0.01,
    samples: int = 25,
    noise: float = 0.15,
    forward: Forward | None = None,
    *,
    max_steps: int = 512,
    sanity: bool = True,
    faithfulness: bool = True,
    precision: str | None = None,
    rows: int | None = None,
    seed: int = 0,
) -> Explanation:
    """Explain ``model``'s output for ``inputs`` ``[B, ...]`` with ``method`` (module
    docstring). ``target``: an output index (int, or ``[B]``), None: the predicted class;
    ``baseline``: a ``baselines.KINDS`` name or a tensor like the inputs (default zero);
    ``rows``: the chunk size in rows (default: sized to free memory). Raises UsageError for a
    bad method, target or model output."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'", hint="one of " + " | ".join(METHODS))
    if precision is not None and precision not in DTYPES:
        raise UsageError(f"precision must be bf16 or fp16, got {precision!r}")
    device = inputs.device
    tokens = not inputs.is_floating_point()
    if tokens and embedding_layer(model) is None:
        raise UsageError(
            "integer inputs need an embedding layer to attribute at, and the model has no "
            "nn.Embedding",
            hint="pass float inputs, or a model whose first layer is an nn.Embedding",
        )
    with torch.no_grad(), _autocast(precision, device):
        scores = logits_of(model, inputs, forward)
    tgt: torch.Tensor | None
    if scores.dim() == 1:
        tgt = None
    elif target is None:
        tgt = scores.argmax(1)
    else:
        tgt = torch.as_tensor(target, device=device).reshape(-1).long()
        if tgt.numel() == 1:
            tgt = tgt.expand(inputs.shape[0]).clone()
    check_target(scores, tgt)
    base_f = scores_fn(model, forward)
    x = inputs
    extra = None
    if tokens:
        layer = embedding_layer(model)
        if layer is None:
            raise UsageError(
                "integer inputs need an embedding layer to attribute at, and the model has "
                "no nn.Embedding",
                hint="pass float inputs, or a model whose first layer is an nn.Embedding",
            )
        with torch.no_grad():
            x = layer(inputs).detach().float()
        f0 = embedding_forward(base_f, layer)
        extra = inputs
    else:
        x = inputs.detach().float() if precision is None else inputs.detach()
        f0 = base_f

    def f(rows_: torch.Tensor, *args: Any) -> torch.Tensor:
        with _autocast(precision, device):
            return f0(rows_, *args).float()

    if isinstance(baseline, torch.Tensor):
        base = baseline.to(device, x.dtype) if not tokens else baseline.to(device).float()
    else:
        base = make_baseline(baseline or "zero", x, noise=noise, seed=seed)
    budget = (
        RowBudget(rows)
        if rows
        else RowBudget.estimate(lambda r: pick(f(r, *(() if extra is None else (extra,))), tgt), x)
    )
    result = _run(
        method, f, x, base, budget, tgt, extra, n_steps, tolerance, max_steps, samples, noise, seed
    )
    exp = Explanation(
        method=method,
        attributions=result.attributions.detach(),
        target=tgt,
        n_steps=result.completeness.n_steps if result.completeness else None,
        completeness=result.completeness.to_dict() if result.completeness else None,
        stderr=result.stderr,
        token_scores=result.attributions.sum(-1) if tokens else None,
        evaluations=result.evaluations,
        precision=precision,
        notes=list(result.notes),
    )
    if precision is not None and method == "ig" and result.completeness is not None:
        exp.precision_check = _precision_check(f0, x, base, budget, result, tolerance, tgt, extra)
    if exp.unconverged:
        stalled = [i for i in exp.unconverged if exp.completeness["stalled"][i]]
        capped = [i for i in exp.unconverged if i not in stalled]
        if capped:
            exp.notes.append(
                f"Integrated Gradients did not reach {tolerance:g} completeness within "
                f"{max_steps} steps for example(s) {capped}: their attributions are not "
                "trustworthy"
            )
        if stalled:
            exp.notes.append(
                f"Integrated Gradients' completeness error did not fall with more steps for "
                f"example(s) {stalled}: the score jumps along the path from the baseline (a "
                "scale-invariant normalisation after the first layer does this with a zero "
                "baseline); try --baseline mean or blur"
            )
    if faithfulness:
        exp.faithfulness = deletion(f, x, exp.attributions, base, budget, tgt, extra, seed=seed)
    if sanity:  # on the first SANITY_EXAMPLES examples (rank correlations average quickly)
        k = min(SANITY_EXAMPLES, x.shape[0])
        exp.sanity = _sanity(
            model,
            method,
            x[:k],
            exp.attributions[:k],
            base[:k],
            budget,
            None if tgt is None else tgt[:k],
            None if extra is None else extra[:k],
            forward,
            inputs[:k],
            tokens,
            precision,
            n_steps,
            result,
            samples,
            noise,
            seed,
        )
    exp.seconds = round(time.perf_counter() - t0, 3)
    return exp


def _run(
    method: str,
    f: Callable[..., torch.Tensor],
    x: torch.Tensor,
    base: torch.Tensor,
    budget: RowBudget,
    tgt: torch.Tensor | None,
    extra: torch.Tensor | None,
    n_steps: int | str,
    tolerance: float,
    max_steps: int,
    samples: int,
    noise: float,
    seed: int,
) -> MethodResult:
    if method == "saliency":
        return saliency(f, x, budget, tgt, extra)
    if method == "smoothgrad":
        return smoothgrad(
            f,
            x,
            budget,
            tgt,
            extra,
            samples=samples,
            noise=noise,
            generator=torch.Generator().manual_seed(seed),
        )
    return integrated_gradients(
        f, x, base, budget, tgt, extra, n_steps=n_steps, tolerance=tolerance, max_steps=max_steps
    )


def _precision_check(
    f0: Callable[..., torch.Tensor],
    x: torch.Tensor,
    base: torch.Tensor,
    budget: RowBudget,
    low: MethodResult,
    tolerance: float,
    tgt: torch.Tensor | None,
    extra: torch.Tensor | None,
) -> dict[str, Any]:
    """IG's completeness in fp32 at the autocast run's steps, against the autocast one."""
    assert low.completeness is not None
    steps = max(low.completeness.n_steps)
    ref = integrated_gradients(
        lambda r, *a: f0(r.float(), *a).float(),
        x.float(),
        base.float(),
        budget,
        tgt,
        extra,
        n_steps=steps,
        tolerance=tolerance,
    )
    assert ref.completeness is not None
    lo = max(low.completeness.relative_error)
    hi = max(ref.completeness.relative_error)
    return {
        "autocast_relative_error": lo,
        "fp32_relative_error": hi,
        "n_steps": steps,
        "precision_limited": lo > 2 * hi,
    }


def _sanity(
    model: nn.Module,
    method: str,
    x: torch.Tensor,
    attributions: torch.Tensor,
    base: torch.Tensor,
    budget: RowBudget,
    tgt: torch.Tensor | None,
    extra: torch.Tensor | None,
    forward: Forward | None,
    inputs: torch.Tensor,
    tokens: bool,
    precision: str | None,
    n_steps: int | str,
    result: MethodResult,
    samples: int,
    noise: float,
    seed: int,
) -> SanityResult:
    """Cascading randomisation with the same method, steps and target (sanity.py)."""
    # the checks compare rank orders, not sums: 32 steps rank as well as 512, at 1/16 the cost
    steps = min(max(result.completeness.n_steps), SANITY_STEPS) if result.completeness else n_steps

    def attribute(m: nn.Module, xs: torch.Tensor) -> torch.Tensor:
        g: Callable[..., torch.Tensor] = scores_fn(m, forward)
        if tokens:
            layer = embedding_layer(m)
            assert layer is not None
            g = embedding_forward(g, layer)

        def h(r: torch.Tensor, *args: Any) -> torch.Tensor:
            with _autocast(precision, xs.device):
                return g(r, *args).float()

        cap = int(steps) if steps != "auto" else 512
        return _run(
            method, h, xs, base, budget, tgt, extra, steps, 1.0, cap, samples, noise, seed
        ).attributions

    def run(m: nn.Module) -> Any:
        return logits_of(m, inputs, forward)

    return cascading_randomisation(
        model,
        attribute,
        x,
        attributions,
        run=run,
        seed=seed,
        inputs_for_edges=None if tokens else x,
    )


__all__ = ["METHODS", "Explanation", "embedding_forward", "embedding_layer", "explain"]
