"""How a run that did not complete is described: the errors the loop raises, and the
out-of-memory explanation (computed by an explainer the API layer injects)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradoctor.errors import OutOfMemory, TrainingInterrupted, UserCodeError
from gradoctor.recipe.components import user_frames
from gradoctor.recipe.schema import Recipe
from gradoctor.training.checkpoint_io import CHECKPOINT_NAME
from gradoctor.training.state import TrainState

# (model, recipe, device, exc, *, step, launch) -> the `memory` diagnosis (a dict) or None.
ExplainOOM = Callable[..., dict[str, Any] | None]


def interrupted(step: int, out_dir: Path, signum: int, mid_step: bool) -> TrainingInterrupted:
    """The error for a run stopped by signal ``signum`` (exit 128 + signum). ``mid_step``: a
    second signal stopped it inside step ``step + 1``, so no checkpoint of that half-done
    step is written (an earlier ``checkpoint_every`` one may exist)."""
    name = signal.Signals(signum).name
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {name}"
    if not mid_step:
        err = TrainingInterrupted(
            f"{what} at step {step}; checkpoint and report saved in {out_dir}",
            hint=f"continue with --resume {out_dir}",
        )
    else:
        earlier = (out_dir / CHECKPOINT_NAME).is_file()
        err = TrainingInterrupted(
            f"{what} during step {step + 1} (a second signal); report saved in {out_dir}, "
            "no checkpoint of the half-done step",
            hint=f"continue from the last saved checkpoint with --resume {out_dir}"
            if earlier
            else "no checkpoint was written: run it again",
        )
    err.exit_code = 128 + int(signum)
    return err


def out_of_memory(exc: BaseException, step: int) -> OutOfMemory:
    return OutOfMemory(
        f"out of memory at step {step}: {str(exc).splitlines()[0]}",
        hint="lower data.batch_size, use precision: bf16, or checkpoint activations (train.checkpoint)",
    )


def user_error(exc: BaseException, step: int, recipe: Recipe | None = None) -> UserCodeError:
    """The user's exception, with only the user's own frames of its traceback, and a fix
    where the raw PyTorch message has a cause users often hit (``mismatch_hint``)."""
    return UserCodeError(
        f"training step {step} raised {type(exc).__name__}: {exc}",
        user_traceback=user_frames(exc),
        hint=mismatch_hint(exc, has_loss=recipe is not None and recipe.loss is not None),
    )


_HINTS: list[tuple[type[BaseException], tuple[str, ...], bool | None, str]] = [
    # (exception type, all of these in the message, needs a loss: block (None: either), fix)
    (
        TypeError,
        ("must be Tensor, not tuple",),
        True,
        "the model returned a tuple where the loss wants a tensor: return the logits from "
        "forward (e.g. out[0]), or remove 'loss:' and return the loss (or an object with .loss)",
    ),
    (
        TypeError,
        ("must be Tensor, not",),
        True,
        "the loss got something that is not a tensor from the model: return the logits tensor "
        "from forward, or remove 'loss:' and return the loss yourself",
    ),
    (
        (IndexError, RuntimeError),  # type: ignore[list-item]
        ("out of bounds",),
        None,
        "a target holds a class index outside the model's outputs: the model's number of "
        "outputs (e.g. out_features) must be the data's number of classes",
    ),
    (
        TypeError,
        ("positional argument",),
        False,
        "without a 'loss:' block a (inputs, targets) batch is passed as model(inputs, "
        "targets): add a 'loss:' block (e.g. torch.nn.CrossEntropyLoss), or make forward take "
        "the targets and return the loss",
    ),
]


def mismatch_hint(exc: BaseException, has_loss: bool) -> str | None:
    """A fix for the recipe/model mismatches behind common raw PyTorch errors, else None."""
    text = str(exc)
    for kinds, needles, needs_loss, fix in _HINTS:
        if (
            isinstance(exc, kinds)
            and all(n in text for n in needles)
            and (needs_loss is None or needs_loss == has_loss)
        ):
            return fix
    return None


def explain_oom(
    explainer: ExplainOOM | None,
    state: TrainState,
    recipe: Recipe,
    exc: BaseException,
    launch: list[str],
) -> dict[str, Any] | None:
    """The ``memory`` diagnosis of an OOM at the step after ``state.step``, after giving back
    what the failed step held; None without an explainer or when it fails (never raises:
    the report matters more than its explanation)."""
    state.optimizer.zero_grad(set_to_none=True)
    if state.device.type == "cuda":
        torch.cuda.empty_cache()
    if explainer is None:
        return None
    try:
        return explainer(state.model, recipe, state.device, exc, step=state.step + 1, launch=launch)
    except Exception:
        return None


__all__ = [
    "ExplainOOM",
    "explain_oom",
    "interrupted",
    "mismatch_hint",
    "out_of_memory",
    "user_error",
]
