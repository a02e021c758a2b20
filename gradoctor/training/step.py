"""One optimizer step of a recipe, written once: every command that trains runs it.

``TrainStep(state, config).run(instruments)`` runs ``accum_steps`` micro-batches (autocast
forward, scaled backward; DDP/FSDP gradient sync only on the last), then unscales, clips,
steps the optimizer through the loss scaler, updates the scaler, clears the gradients and
steps the scheduler unless the update was skipped. Instruments attach at the points listed
in ``gradoctor.monitors.instrument``. The loop, the non-finite replay and the memory
profiler differ only in the instruments they pass and in what they do with the outcome.

Host syncs: none of its own, except ``GradScaler.step``'s one under fp16, one per step for
fused optimizers under fp16 (their skip flag), and one per step when ``drop_update`` is
given (the guard's ``on_nonfinite: skip`` mode, after a non-finite step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradoctor.distributed.wrap import no_sync
from gradoctor.monitors.grad_norms import GradNormRecorder, ParamIndex
from gradoctor.monitors.instrument import Instrument, StepOutcome, StepView
from gradoctor.recipe.schema import Recipe
from gradoctor.torch_private import found_inf_total, takes_found_inf
from gradoctor.training.batches import batch_size, compute_loss, to_device
from gradoctor.training.precision import autocast
from gradoctor.training.rewind import Rewind
from gradoctor.training.state import TrainState

_NULL = contextlib.nullcontext()


@dataclass(frozen=True)
class StepConfig:
    """How a step runs: ``precision`` (fp32 | bf16 | fp16), ``accum_steps`` micro-batches per
    optimizer step (the loss is divided by it), ``clip_grad_norm`` (max total norm of the
    unscaled gradients, or None), ``dist_strategy`` (``ddp`` | ``fsdp`` | None: how the
    micro-batches but the last skip the gradient sync)."""

    precision: str
    accum_steps: int = 1
    clip_grad_norm: float | None = None
    dist_strategy: str | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe, dist_strategy: str | None = None) -> StepConfig:
        t = recipe.train
        return cls(recipe.precision, t.accum_steps, t.clip_grad_norm, dist_strategy)


def micro_batch_loss(
    state: TrainState, batch: Any, precision: str, model: torch.nn.Module | None = None
) -> torch.Tensor:
    """The recipe's loss on one device batch, under the precision's autocast (0-d), through
    ``model`` (default: ``state.train_model``, the DDP wrapper when there is one)."""
    with autocast(precision, state.device):
        return compute_loss(model or state.train_model, batch, state.loss_fn)


def backward_loss(state: TrainState, loss: torch.Tensor, accum_steps: int) -> torch.Tensor:
    """What the backward differentiates: the loss divided over micro-batches, then scaled."""
    return state.scaler.scale(loss / accum_steps if accum_steps > 1 else loss)


def clip_gradients(
    norms: GradNormRecorder,
    param_norms: torch.Tensor,
    max_norm: float,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """The one gradient clipping: every gradient times ``min(1, max_norm / (total + 1e-6))``
    (``clip_grad_norm_``'s rule), from the per-parameter norms the step already has.
    ``reduce`` turns local norms into global ones (FSDP: one all_reduce of n_params floats)."""
    norms.clip(reduce(param_norms) if reduce is not None else param_norms, max_norm)


def _around(
    active: list[Instrument], point: str, view: StepView
) -> contextlib.AbstractContextManager[Any]:
    """The instruments' contexts for ``point`` as one context: only instruments that override
    it are asked, and nothing is stacked when none or one takes part (the common case)."""
    cms = [
        cm
        for inst in active
        if getattr(type(inst), point) is not getattr(Instrument, point)
        and (cm := getattr(inst, point)(view)) is not _NULL
    ]
    if not cms:
        return _NULL
    return cms[0] if len(cms) == 1 else _stacked(cms)


@contextlib.contextmanager
def _stacked(cms: list[contextlib.AbstractContextManager[Any]]) -> Any:
    with contextlib.ExitStack() as stack:
        for cm in cms:
            stack.enter_context(cm)
        yield


class TrainStep:
    """Runs optimizer steps of one ``TrainState``; built once per run (it keeps an optimizer
    step hook, removed by ``close()``).

    ``norms``: the per-parameter gradient-norm recorder that clipping and instruments share
    (built over the state's model when not given). ``norm_reduce``: FSDP's local->global
    norms for clipping. ``fetch``: returns the next host batch (default: the state's data
    stream). ``rewind``: marked at each step start, so that a step that fails before
    ``update_began`` can be undone."""

    def __init__(
        self,
        state: TrainState,
        config: StepConfig,
        *,
        norms: GradNormRecorder | None = None,
        norm_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fetch: Callable[[], Any] | None = None,
        rewind: Rewind | None = None,
    ):
        self.state = state
        self.rewind = rewind  # marked at every step start (the loop's failure checkpoint)
        self.update_began = False  # the parameters may have changed: the step cannot be undone
        self.config = config
        self.norms = norms or GradNormRecorder(ParamIndex(state.model), state.device)
        self.norm_reduce = norm_reduce
        self.fetch = fetch or state.data.next
        self._stepped = False
        self._hook = state.optimizer.register_step_post_hook(self._on_optimizer_step)
        self._fused_amp = takes_found_inf(state.optimizer) and state.scaler.is_enabled()

    def close(self) -> None:
        """Remove the optimizer hook (nothing of the step stays behind)."""
        self._hook.remove()

    def _on_optimizer_step(self, *_: Any) -> None:
        self._stepped = True

    def run(
        self,
        instruments: Sequence[Instrument] = (),
        *,
        drop_update: Callable[[StepView, torch.Tensor], bool] | None = None,
    ) -> StepOutcome:
        """One optimizer step with ``instruments`` attached; ``state.step`` advances by one.

        ``drop_update(view, loss)`` is asked just before the optimizer step (no loss scaler
        only): True drops the update (counted as skipped). Raises whatever the user's code
        raises; the state is then mid-step."""
        s, cfg = self.state, self.config
        view = StepView(
            step=s.step + 1,
            model=s.model,
            optimizer=s.optimizer,
            scaler=s.scaler,
            device=s.device,
            precision=cfg.precision,
            accum_steps=cfg.accum_steps,
            norms=self.norms,
        )
        self.update_began = False
        if self.rewind is not None:
            self.rewind.mark()
        active = [i for i in instruments if i.active(view.step)]
        for inst in active:
            inst.step_start(view)
        loss_sum = self._micro_batches(view, active)
        skipped, lr = self._update(view, active, loss_sum, drop_update)
        loss = loss_sum / cfg.accum_steps if cfg.accum_steps > 1 else loss_sum
        if s.scheduler is not None and not skipped:
            s.scheduler.step()  # never on a step the loss scaler (or the guard) skipped
        outcome = StepOutcome(
            step=view.step,
            loss=loss,
            grad_norms=view._grad_norms,
            skipped=skipped,
            lr=lr,
            samples=view.samples,
        )
        s.step = view.step
        for inst in active:
            inst.step_end(view, outcome)
        return outcome

    def _micro_batches(self, view: StepView, active: list[Instrument]) -> torch.Tensor:
        """Forward and backward of every micro-batch; returns the sum of their losses."""
        s, cfg = self.state, self.config
        loss_sum: torch.Tensor | None = None
        for micro in range(cfg.accum_steps):
            view.micro = micro
            batch = to_device(self.fetch(), s.device)
            view.samples += batch_size(batch)
            view.batch = batch
            last = micro == cfg.accum_steps - 1
            sync = no_sync(s.train_model, cfg.dist_strategy, last) if cfg.dist_strategy else _NULL
            with sync:
                with _around(active, "forward", view):
                    loss = micro_batch_loss(s, batch, cfg.precision)
                view.loss = loss
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                with _around(active, "backward", view):
                    backward_loss(s, loss, cfg.accum_steps).backward()
            view.batch = view.loss = None
            del loss, batch  # the next micro-batch's forward runs without them
        assert loss_sum is not None
        return loss_sum

    def _update(
        self,
        view: StepView,
        active: list[Instrument],
        loss_sum: torch.Tensor,
        drop_update: Callable[[StepView, torch.Tensor], bool] | None,
    ) -> tuple[bool, float]:
        """Unscale, clip, step and update, clear gradients: ``(skipped, lr)``."""
        s, cfg = self.state, self.config
        with _around(active, "optimizer", view):
            s.scaler.unscale_(s.optimizer)  # gradients are unscaled from here on
            for inst in active:
                inst.after_unscale(view)
            if cfg.clip_grad_norm is not None:
                clip_gradients(self.norms, view.grad_norms(), cfg.clip_grad_norm, self.norm_reduce)
            for inst in active:
                inst.before_update(view)
            lr = float(s.optimizer.param_groups[0]["lr"])
            if (
                drop_update is not None
                and not s.scaler.is_enabled()
                and drop_update(view, loss_sum)
            ):
                skipped = True
            else:
                self._stepped = False
                self.update_began = True
                s.scaler.step(s.optimizer)
                skipped = self._was_skipped()
                s.scaler.update()
            for inst in active:
                inst.after_update(view)
            s.optimizer.zero_grad(set_to_none=True)
        return skipped, lr

    def _was_skipped(self) -> bool:
        if not self.state.scaler.is_enabled():
            return False
        if self._fused_amp:  # one extra sync per step, only for fused optimizers under fp16
            return bool(found_inf_total(self.state.scaler, self.state.optimizer))
        return not self._stepped


__all__ = [
    "StepConfig",
    "TrainStep",
    "backward_loss",
    "clip_gradients",
    "micro_batch_loss",
]
