"""``gradoctor curvature``: the Hessian of a recipe's training loss, and the learning rate's
stability limit, at a checkpoint or at initialisation.

What is analysed is what ``gradoctor train`` would optimise: the run state is built as the
loop builds it (``build_state``: the recipe's components and seed; activation checkpointing
is undone, which changes no value), the loss is the training step's (``compute_loss``: the
recipe's loss and batch contract, in fp32), and the batches are the first N the run trains
on, in order (the seeded data stream, before a checkpoint moves it). A checkpoint then
supplies the weights, the optimizer state and the scheduler's learning rate.

The stability verdict compares the sharpness the optimizer is sensitive to with its
threshold at the current learning rate (``stability.py``): λmax(H) for SGD; for Adam/AdamW
λmax(P⁻¹H) with P from the optimizer state (one more Lanczos run, ~20-30 HVPs; needs a
checkpoint, a fresh optimizer has no state). Under bf16 the top eigenvalue is also measured
with the loss under autocast and the difference to fp32 is reported.

Cost: building the recipe, N batches on the device, and the HVPs counted in ``hvps``
(``hessian_spectrum``'s docstring), each one a pass over the N batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradoctor.devices import pick_device
from gradoctor.errors import UsageError
from gradoctor.hessian.api import hessian_spectrum
from gradoctor.hessian.result import CurvatureResult
from gradoctor.hessian.stability import adam_preconditioner, stability_threshold
from gradoctor.recipe import Recipe, load_command_recipe
from gradoctor.sinks.report_json import check_json_target, write_json_output
from gradoctor.training.batches import compute_loss, to_device
from gradoctor.training.build import build_state
from gradoctor.training.checkpoint_io import find_checkpoint, load_checkpoint
from gradoctor.training.precision import autocast
from gradoctor.training.state import TrainState


@dataclass(frozen=True)
class CurvatureOptions:
    """What to compute. ``batches``: how many of the run's first batches (an int ≥ 1, or
    ``"all"``: one epoch); ``top_k``: eigenvalues (largest first); ``trace``: Hutch++ with
    ``trace_hvps`` HVPs; ``density``: stochastic Lanczos quadrature; ``per_layer``: each
    module's block; ``checkpoint``: a run folder or checkpoint file (default: the model as
    initialised by the recipe's seed)."""

    checkpoint: Path | None = None
    batches: int | str = 4
    top_k: int = 1
    trace: bool = False
    trace_hvps: int = 100
    density: bool = False
    per_layer: bool = False
    seed: int = 0


def curvature(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    **options: Any,
) -> CurvatureResult:
    """``gradoctor curvature``'s API: ``recipe`` (default ``./recipe.yaml``) with
    ``overrides``; ``options`` are ``CurvatureOptions`` fields (``checkpoint=``,
    ``batches=``, ``top_k=``, ``trace=``, ``density=``, ``per_layer=``...); ``json_path``
    also writes ``result.to_dict()`` there (checked before anything runs). Silent."""
    if json_path is not None:
        check_json_target(Path(json_path))
    try:
        opts = CurvatureOptions(**options)
    except TypeError as exc:
        raise UsageError(f"curvature(): {exc}") from None
    loaded = load_command_recipe(recipe, overrides, "curvature")
    result = recipe_curvature(loaded, opts)
    if json_path is not None:
        write_json_output(Path(json_path), result.to_dict())
    return result


def recipe_curvature(recipe: Recipe, options: CurvatureOptions) -> CurvatureResult:
    """The curvature of ``recipe``'s training loss (module docstring). Raises UsageError
    (bad options, a checkpoint that does not match), RecipeError, UserCodeError."""
    t0 = time.perf_counter()
    count = batch_count(options.batches)
    device = pick_device(recipe.train.device)
    state, undo_checkpointing = build_state(recipe, device)
    undo_checkpointing()  # recomputation changes no value; double backward goes through plain modules
    batches = first_batches(state, count)
    where = "at initialisation (train.seed) — an untrained model"
    if options.checkpoint is not None:
        state.load_state_dict(load_checkpoint(Path(options.checkpoint)))
        where = f"at step {state.step} ({find_checkpoint(Path(options.checkpoint))})"

    def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return compute_loss(model, batch, state.loss_fn)

    result = hessian_spectrum(
        state.model,
        loss_fn,
        batches,
        top_k=options.top_k,
        trace=options.trace,
        trace_hvps=options.trace_hvps,
        density=options.density,
        per_layer=options.per_layer,
        seed=options.seed,
    )
    result.notes.insert(
        0, f"model {where}; the mean loss over the run's first {len(batches)} batch(es)"
    )
    result.stability = stability_verdict(state, loss_fn, batches, result, options.seed)
    if recipe.precision == "bf16":
        result.notes.append(_bf16_difference(state, loss_fn, batches, result, options.seed))
    elif recipe.precision == "fp16":
        result.notes.append(
            "the recipe trains in fp16; HVPs ran in fp32 (second derivatives under fp16 "
            "autocast need their own loss scaling, not measured)"
        )
    result.recipe, result.device = recipe.name, str(device)
    result.seconds = time.perf_counter() - t0
    return result


def batch_count(batches: int | str) -> int | None:
    """``batches`` as a count, or None for ``"all"``; UsageError otherwise."""
    if batches == "all":
        return None
    try:
        count = int(batches)
    except (TypeError, ValueError):
        count = 0
    if isinstance(batches, bool) or count < 1 or str(count) != str(batches).strip():
        raise UsageError(
            f"--batches must be a whole number >= 1 or 'all', got {batches!r}",
            hint="e.g. --batches 4 (the default) or --batches all (one epoch)",
        )
    return count


def first_batches(state: TrainState, count: int | None) -> list[Any]:
    """The first ``count`` batches the run trains on (None: the whole first epoch), on the
    state's device. UsageError when one epoch has fewer than ``count``."""
    stream = state.data
    batches = [to_device(stream.next(), state.device)]
    while (count is None or len(batches) < count) and stream.epoch == 0:
        batch = stream.next()
        if stream.epoch == 0:
            batches.append(to_device(batch, state.device))
    if count is not None and len(batches) < count:
        raise UsageError(
            f"--batches {count}, but one epoch of the recipe's data has {len(batches)} batch(es)",
            hint=f"use --batches {len(batches)} or --batches all",
        )
    return batches


def stability_verdict(
    state: TrainState, loss_fn: Any, batches: list[Any], result: CurvatureResult, seed: int
) -> dict[str, Any]:
    """The optimizer's threshold at its current lr, the sharpness it applies to, their ratio
    and the largest stable lr (``lr · threshold / sharpness``)."""
    stability = stability_threshold(state.optimizer)
    verdict: dict[str, Any] = {**stability.to_dict(), "sharpness": None, "ratio": None}
    if stability.threshold is None or not result.eigenvalues:
        return verdict
    sharpness = result.eigenvalues[0]
    if stability.preconditioned:
        try:
            d = adam_preconditioner(state.optimizer, state.model)
        except UsageError as exc:
            verdict["note"] = (
                f"{exc.message}: the threshold applies to the preconditioned sharpness "
                "λmax(P⁻¹H), which needs the optimizer's state (pass --checkpoint of a run)"
            )
            return verdict
        pre = hessian_spectrum(state.model, loss_fn, batches, top_k=1, preconditioner=d, seed=seed)
        result.hvps += pre.hvps
        sharpness = pre.eigenvalues[0]
    verdict["sharpness"] = sharpness
    verdict["ratio"] = sharpness / stability.threshold
    if sharpness > 0 and stability.lr:
        verdict["max_stable_lr"] = stability.lr * stability.threshold / sharpness
    return verdict


def _bf16_difference(
    state: TrainState, loss_fn: Any, batches: list[Any], result: CurvatureResult, seed: int
) -> str:
    def bf16_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        with autocast("bf16", state.device):
            return loss_fn(model, batch).float()

    v0 = result.eigenvectors[:, 0] if result.eigenvectors is not None else None
    low = hessian_spectrum(state.model, bf16_loss, batches, top_k=1, v0=v0, seed=seed)
    result.hvps += low.hvps
    fp32, bf16 = result.eigenvalues[0], low.eigenvalues[0]
    diff = abs(bf16 - fp32) / abs(fp32) if fp32 else float("inf")
    return (
        f"HVPs in fp32; under the recipe's bf16 autocast λ1 = {bf16:.6g} "
        f"({100 * diff:.2f}% from fp32's {fp32:.6g})"
    )


__all__ = ["CurvatureOptions", "batch_count", "curvature", "first_batches", "recipe_curvature"]
