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

Under torchrun (or inside an initialised process group; ``curvature`` sets it up, as
``gradoctor train`` does): every rank builds the same run state (no DDP wrapper, no sharding,
no DistributedSampler: the batches are the same first N a single process trains on), takes
rank 0's parameters and buffers (one broadcast per tensor), keeps batch i when
i % world_size == rank, and the HVPs are all-reduced (``hessian_spectrum(process_group=...)``):
each rank runs N / world_size batches per HVP, plus one all-reduce of P + 5 float64. The
result is the same on every rank and equals the single-process one on the same batches (up
to the order of the batch sum); only rank 0 writes ``json_path``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gradoctor.devices import pick_device
from gradoctor.distributed.context import DistContext, launched_by_torchrun, setup_distributed
from gradoctor.errors import UsageError
from gradoctor.hessian.api import hessian_spectrum
from gradoctor.hessian.ranks import RankSum, broadcast_module
from gradoctor.hessian.result import CurvatureResult
from gradoctor.hessian.stability import adam_preconditioner, stability_threshold
from gradoctor.recipe import Recipe, command_options, load_command_recipe
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
    opts = command_options(CurvatureOptions, options, "curvature")
    loaded = load_command_recipe(recipe, overrides, "curvature")
    with curvature_ranks(loaded) as ctx:
        result = recipe_curvature(loaded, opts, ctx)
    if json_path is not None and (ctx is None or ctx.is_main):
        write_json_output(Path(json_path), result.to_dict())
    return result


@contextlib.contextmanager
def curvature_ranks(recipe: Recipe) -> Iterator[DistContext | None]:
    """This process's rank under torchrun or in an already initialised process group (the
    process group torchrun's environment describes is set up here and destroyed on exit; one
    that existed is left open), else None: one process (a recipe's ``distributed:`` block
    alone does not start a process group)."""
    if not (launched_by_torchrun() or (dist.is_available() and dist.is_initialized())):
        yield None
        return
    ctx = setup_distributed(recipe.distributed, recipe.train.device)
    try:
        yield ctx
    finally:
        if ctx is not None:
            ctx.close()


def recipe_curvature(
    recipe: Recipe, options: CurvatureOptions, ctx: DistContext | None = None
) -> CurvatureResult:
    """The curvature of ``recipe``'s training loss (module docstring); with ``ctx`` (a rank
    of an initialised process group, ``curvature_ranks``) the batches are spread over its
    ranks. Raises UsageError (bad options, a checkpoint that does not match), RecipeError,
    UserCodeError."""
    t0 = time.perf_counter()
    count = batch_count(options.batches)
    group = dist.group.WORLD if ctx is not None and ctx.world_size > 1 else None
    device = ctx.device if ctx is not None else pick_device(recipe.train.device)
    state, undo_checkpointing = build_state(recipe, device)
    undo_checkpointing()  # recomputation changes no value; double backward goes through plain modules
    share = (ctx.rank, ctx.world_size) if group is not None else (0, 1)
    batches = first_batches(state, count, share=share)
    where = "at initialisation (train.seed) — an untrained model"
    if options.checkpoint is not None:
        state.load_state_dict(load_checkpoint(Path(options.checkpoint)))
        where = f"at step {state.step} ({find_checkpoint(Path(options.checkpoint))})"
    if group is not None:
        broadcast_module(state.model, RankSum(group))

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
        process_group=group,
    )
    result.notes.insert(
        0, f"model {where}; the mean loss over the run's first {result.batches} batch(es)"
    )
    if group is not None:
        result.notes.append(
            f"{ctx.world_size} ranks: batch i measured on rank i mod {ctx.world_size}, "
            "Hessian-vector products all-reduced"
        )
    result.stability = stability_verdict(state, loss_fn, batches, result, options.seed, group)
    if recipe.precision == "bf16":
        result.notes.append(_bf16_difference(state, loss_fn, batches, result, options.seed, group))
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


def first_batches(
    state: TrainState, count: int | None, share: tuple[int, int] = (0, 1)
) -> list[Any]:
    """The first ``count`` batches the run trains on (None: the whole first epoch), on the
    state's device; with ``share=(rank, world)`` only batch i with i % world == rank (the
    others are read but stay on the host). UsageError when one epoch has fewer than
    ``count``."""
    rank, world = share
    stream = state.data
    batches = [stream.next()]
    while (count is None or len(batches) < count) and stream.epoch == 0:
        batch = stream.next()
        if stream.epoch == 0:
            batches.append(batch)
    if count is not None and len(batches) < count:
        raise UsageError(
            f"--batches {count}, but one epoch of the recipe's data has {len(batches)} batch(es)",
            hint=f"use --batches {len(batches)} or --batches all",
        )
    return [to_device(b, state.device) for i, b in enumerate(batches) if i % world == rank]


def stability_verdict(
    state: TrainState,
    loss_fn: Any,
    batches: list[Any],
    result: CurvatureResult,
    seed: int,
    group: dist.ProcessGroup | None = None,
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
        pre = hessian_spectrum(
            state.model,
            loss_fn,
            batches,
            top_k=1,
            preconditioner=d,
            seed=seed,
            process_group=group,
        )
        result.hvps += pre.hvps
        sharpness = pre.eigenvalues[0]
    verdict["sharpness"] = sharpness
    verdict["ratio"] = sharpness / stability.threshold
    if sharpness > 0 and stability.lr:
        verdict["max_stable_lr"] = stability.lr * stability.threshold / sharpness
    return verdict


def _bf16_difference(
    state: TrainState,
    loss_fn: Any,
    batches: list[Any],
    result: CurvatureResult,
    seed: int,
    group: dist.ProcessGroup | None,
) -> str:
    def bf16_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        with autocast("bf16", state.device):
            return loss_fn(model, batch).float()

    v0 = result.eigenvectors[:, 0] if result.eigenvectors is not None else None
    low = hessian_spectrum(
        state.model, bf16_loss, batches, top_k=1, v0=v0, seed=seed, process_group=group
    )
    result.hvps += low.hvps
    fp32, bf16 = result.eigenvalues[0], low.eigenvalues[0]
    diff = abs(bf16 - fp32) / abs(fp32) if fp32 else float("inf")
    return (
        f"HVPs in fp32; under the recipe's bf16 autocast λ1 = {bf16:.6g} "
        f"({100 * diff:.2f}% from fp32's {fp32:.6g})"
    )


__all__ = [
    "CurvatureOptions",
    "batch_count",
    "curvature",
    "curvature_ranks",
    "first_batches",
    "recipe_curvature",
]
