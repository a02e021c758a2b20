"""The run state: everything that makes a training run resumable, as one object.

``TrainState`` holds the model, optimizer, loss scaler, scheduler, loss function, the data
stream (with its exact position) and the step counters. ``state_dict()`` is what a
checkpoint stores and what a replay snapshot copies; ``load_state_dict()`` puts either back.
This is the only place that lists what makes up the state.

Checkpoint format (``CHECKPOINT_FORMAT``): a dict with ``format``, ``step``, ``model``,
``optimizer``, ``scaler``, ``scheduler``, ``rng`` (every RNG a step draws from), ``data``
(epoch, batch index and the epoch's shuffle RNG), plus what the loop adds (``history``).
Format 1 is the only one so far; a checkpoint with another number fails with a message
that names both versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradoctor.distributed.wrap import full_state_dicts, load_full_state_dicts
from gradoctor.errors import UsageError
from gradoctor.training.data_stream import DataStream
from gradoctor.training.environment import capture_rng, restore_rng

CHECKPOINT_FORMAT = 1
STATE_KEYS = ("model", "optimizer", "scaler", "scheduler", "rng", "data")


@dataclass
class TrainState:
    """One run's resumable state.

    ``model`` is the unwrapped module (instruments, state dicts and the replay use it; FSDP2
    shards it in place); ``train_model`` is what the training forward goes through (the DDP
    wrapper, else ``model``). ``step`` counts completed optimizer steps, including those of
    the run a resume continued; ``start_step`` is where this process began.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: Any
    loss_fn: Any
    data: DataStream
    device: torch.device
    train_model: nn.Module | None = None
    fsdp: bool = False
    step: int = 0
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model

    def state_dict(self) -> dict[str, Any]:
        """The state at the current step boundary. Tensors are the live ones (not copies),
        except under FSDP, where every rank takes part in gathering the full model and
        optimizer state to rank 0's CPU memory (other ranks get empty dicts)."""
        if self.fsdp:
            model_state, optim_state = full_state_dicts(self.model, self.optimizer)
        else:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": model_state,
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": capture_rng(),
            "data": self.data.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the run back at ``state``'s step boundary (counters included, ``start_step``
        excepted). Raises UsageError for a checkpoint of an unknown format."""
        check_format(state)
        if self.fsdp:  # full state on every rank -> this rank's shards
            load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            _check_optimizer(self.optimizer, state["optimizer"])
            try:
                self.model.load_state_dict(state["model"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise _mismatch(f"model ({type(self.model).__name__})", str(exc)) from None
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise _mismatch(f"optimizer ({type(self.optimizer).__name__})", str(exc)) from None
        if state["scaler"]:  # a disabled scaler's state is {}
            self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.data.restore(state["data"])
        restore_rng(state["rng"])
        self.step = int(state["step"])


def _mismatch(what: str, detail: str) -> UsageError:
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()]
    return UsageError(
        f"the checkpoint does not match this recipe's {what}: " + " ".join(lines[:4]),
        hint="resume with the recipe the run was trained with (the run folder keeps a copy, "
        "recipe.yaml), or start a fresh run without --resume",
    )


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A checkpoint of another optimizer class loads without error and fails at its first
    step (an AdamW state in SGD: ``KeyError: 'momentum'``); its hyperparameter names tell.
    Names only one side has (a newer torch adding one) are not a mismatch; both are."""
    ours = set(optimizer.param_groups[0]) - {"params"} if optimizer.param_groups else set()
    groups = saved.get("param_groups") or [{}]
    theirs = set(groups[0]) - {"params"}
    if ours - theirs and theirs - ours:
        raise _mismatch(
            f"optimizer ({type(optimizer).__name__})",
            f"the checkpoint's optimizer has {', '.join(sorted(theirs - ours))}, this one "
            f"has {', '.join(sorted(ours - theirs))}",
        )


def check_format(state: dict[str, Any]) -> None:
    """A readable error for a checkpoint this version cannot load."""
    version = state.get("format", CHECKPOINT_FORMAT)
    missing = [k for k in ("step", *STATE_KEYS) if k not in state]
    if version != CHECKPOINT_FORMAT or missing:
        raise UsageError(
            f"checkpoint format {version!r} cannot be resumed by this gradoctor (it reads "
            f"format {CHECKPOINT_FORMAT})"
            + (f"; missing keys: {', '.join(missing)}" if missing else ""),
            hint="resume it with the gradoctor version that wrote it, or start a fresh run",
        )


__all__ = ["CHECKPOINT_FORMAT", "STATE_KEYS", "TrainState", "check_format"]
