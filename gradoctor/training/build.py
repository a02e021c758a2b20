"""Build the user's model, data, loss, optimizer and scheduler from a recipe's components,
and from them the run state (``build_state``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gradoctor.distributed.context import DistContext
from gradoctor.distributed.sampler import distribute_data
from gradoctor.distributed.wrap import shard_fsdp, wrap_ddp
from gradoctor.errors import RecipeError, RecipeProblem, UserCodeError
from gradoctor.recipe.components import ResolveError, call_user, resolve_target
from gradoctor.recipe.schema import ComponentSpec, Recipe
from gradoctor.training.activation_checkpointing import apply_checkpointing
from gradoctor.training.data_stream import DataStream
from gradoctor.training.environment import seed_everything
from gradoctor.training.precision import make_scaler
from gradoctor.training.state import TrainState


@dataclass
class Components:
    model: torch.nn.Module
    data: Any
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any


def _resolve(spec: ComponentSpec, recipe: Recipe) -> Any:
    try:
        return resolve_target(spec.target, recipe.base_dir)
    except ResolveError as exc:
        message = f"cannot resolve '{spec.target}': {exc.message}"
        if exc.user_traceback:
            message += "\n" + exc.user_traceback.rstrip()
        raise RecipeError(
            [RecipeProblem(f"{spec.key}._component_", message, hint=exc.hint)]
        ) from exc


def build_components(
    recipe: Recipe,
    device: torch.device,
    shard: Callable[[torch.nn.Module], None] | None = None,
) -> Components:
    """Construct everything in a fixed order (model first, so seeded init is reproducible).

    ``shard`` (FSDP) transforms the model in place before the optimizer is created, so the
    optimizer holds the sharded parameters."""
    model = call_user(
        _resolve(recipe.model, recipe), what=f"model '{recipe.model.target}'", **recipe.model.kwargs
    )
    if not isinstance(model, torch.nn.Module):
        raise UserCodeError(
            f"model '{recipe.model.target}' returned a {type(model).__name__}, not a torch.nn.Module",
            hint="model._component_ must name an nn.Module class or a function returning one",
        )
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserCodeError(
            "the model has no trainable parameters", hint="check requires_grad on your parameters"
        )
    if shard is not None:
        shard(model)
    data = call_user(
        _resolve(recipe.data, recipe), what=f"data '{recipe.data.target}'", **recipe.data.kwargs
    )
    loss_fn = None
    if recipe.loss is not None:
        loss_fn = call_user(
            _resolve(recipe.loss, recipe), what=f"loss '{recipe.loss.target}'", **recipe.loss.kwargs
        )
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn.to(device)
    optimizer = call_user(
        _resolve(recipe.optimizer, recipe),
        [p for p in model.parameters() if p.requires_grad],
        what=f"optimizer '{recipe.optimizer.target}'",
        **recipe.optimizer.kwargs,
    )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserCodeError(f"optimizer '{recipe.optimizer.target}' is not a torch.optim.Optimizer")
    scheduler = None
    if recipe.scheduler is not None:
        scheduler = call_user(
            _resolve(recipe.scheduler, recipe),
            optimizer,
            what=f"scheduler '{recipe.scheduler.target}'",
            **recipe.scheduler.kwargs,
        )
    return Components(model, data, loss_fn, optimizer, scheduler)


def build_state(
    recipe: Recipe, device: torch.device, dist: DistContext | None = None
) -> tuple[TrainState, Callable[[], None]]:
    """The recipe's run state, seeded and ready to train, and the function that undoes its
    activation checkpointing. Distributed: the data is split over ranks; DDP wraps the model
    for the training forward (``state.train_model``; instruments, state dicts and the replay
    use the unwrapped ``state.model``); FSDP2 shards the model in place."""
    seed_everything(recipe.train.seed)
    fsdp = dist is not None and dist.strategy == "fsdp"
    shard = (lambda m: shard_fsdp(m, device)) if fsdp else None
    parts = build_components(recipe, device, shard=shard)
    data = parts.data
    if dist is not None:
        data = distribute_data(data, dist, recipe.train.seed)
    stream = DataStream(data)
    undo = apply_checkpointing(parts.model, recipe.train.checkpoint)
    ddp = dist is not None and dist.strategy == "ddp"
    state = TrainState(
        model=parts.model,
        optimizer=parts.optimizer,
        scaler=make_scaler(recipe.precision, device, recipe.grad_scaler),
        scheduler=parts.scheduler,
        loss_fn=parts.loss_fn,
        data=stream,
        device=device,
        train_model=wrap_ddp(parts.model, device) if ddp else parts.model,
        fsdp=fsdp,
    )
    return state, undo
