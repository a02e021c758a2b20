"""The instrumented training loop.

Reads top to bottom: ``Trainer(recipe)`` builds everything, ``step()`` runs one optimizer
step, ``run()`` loops, flushes the instruments once per log interval and always finishes with
the report written, the events flushed and (unless the run failed) a checkpoint saved.

Host<->device syncs: one per log interval (``IntervalCollector.flush``), one per histogram
interval, and the one ``GradScaler.step`` makes itself under fp16. Nothing per layer.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import gradoctor
from gradoctor.diagnose.context import RunContext, module_infos
from gradoctor.diagnose.engine import diagnose
from gradoctor.distributed.aggregate import IntervalReducer, RankLedger, any_rank, global_norms
from gradoctor.distributed.context import setup_distributed
from gradoctor.distributed.failure import post_failure, read_failure, sigterm_as_interrupt
from gradoctor.distributed.sampler import distribute_data
from gradoctor.distributed.wrap import (
    full_state_dicts,
    load_full_state_dicts,
    no_sync,
    shard_fsdp,
    wrap_ddp,
)
from gradoctor.errors import GradoctorError, OutOfMemory, TrainingInterrupted, UserCodeError
from gradoctor.monitors.activations import ActivationSampler
from gradoctor.monitors.grad_norms import GradNormRecorder, ParamIndex
from gradoctor.monitors.histograms import GradHistograms
from gradoctor.monitors.interval import IntervalCollector, IntervalData
from gradoctor.monitors.memory import MemoryMonitor, _rss_peak
from gradoctor.recipe.components import user_frames
from gradoctor.recipe.schema import Recipe
from gradoctor.training.progress import Reporter
from gradoctor.training.result import TrainResult
from gradoctor.sinks.report_json import write_json_atomic
from gradoctor.sinks.tensorboard import TensorBoardSink
from gradoctor.training.activation_checkpointing import apply_checkpointing
from gradoctor.training.batches import batch_size, compute_loss, to_device
from gradoctor.training.build import build_components
from gradoctor.training.checkpoint_io import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from gradoctor.training.data_stream import DataStream
from gradoctor.training.environment import (
    capture_rng,
    deterministic_mode,
    pick_device,
    restore_rng,
    seed_everything,
)
from gradoctor.training.history import History
from gradoctor.training.nonfinite import NonFiniteGuard, StopRun
from gradoctor.training.precision import autocast, make_scaler, scale_tensor

_NULL = contextlib.nullcontext()


class Trainer:
    """One run of a recipe. ``resume`` is a run folder (or checkpoint file) to continue from."""

    def __init__(
        self, recipe: Recipe, *, reporter: Reporter | None = None, resume: Path | None = None
    ):
        self.recipe = recipe
        self.reporter = reporter or Reporter()
        self.out_dir = recipe.output_dir()
        # Distributed (torchrun, or a `distributed:` block): this rank's context, else None.
        self.dist = setup_distributed(recipe.distributed, recipe.train.device)
        self.main = self.dist is None or self.dist.is_main  # rank 0 writes every output
        self.fsdp = self.dist is not None and self.dist.strategy == "fsdp"
        if not self.main:
            self.reporter = Reporter()  # progress and the report come from rank 0 only
        self.device = self.dist.device if self.dist else pick_device(recipe.train.device)
        self.every = recipe.diagnostics.every
        seed_everything(recipe.train.seed)
        parts = build_components(recipe, self.device, shard=self._shard if self.fsdp else None)
        self.model, self.optimizer, self.scheduler, self.loss_fn = (
            parts.model,
            parts.optimizer,
            parts.scheduler,
            parts.loss_fn,
        )
        data = parts.data
        if self.dist is not None:
            data = distribute_data(data, self.dist, recipe.train.seed)
        self.data = DataStream(data)
        self._undo_checkpointing = apply_checkpointing(self.model, recipe.train.checkpoint)
        # The training forward goes through DDP; instruments, state dicts and the replay
        # use the unwrapped module (`self.model`). FSDP2 shards `self.model` in place.
        self.train_model = (
            wrap_ddp(self.model, self.device)
            if self.dist is not None and self.dist.strategy == "ddp"
            else self.model
        )
        self.scaler = make_scaler(recipe.precision, self.device, recipe.grad_scaler)
        self.index = ParamIndex(self.model)
        self.norms = GradNormRecorder(self.index, self.device)
        self.buffer = IntervalCollector(len(self.index), self.index.unpermute, self.device)
        self.memory = MemoryMonitor(self.device, self.index.params)
        self.histograms = (
            GradHistograms(self.index, recipe.diagnostics.histogram_samples)
            if recipe.diagnostics.histogram_every
            else None
        )
        self.history = History(self.index.modules)
        self.step_count = 0  # optimizer steps completed (including those of a resumed run)
        self.start_step = 0
        self._stepped = False
        self._hook = self.optimizer.register_step_post_hook(self._on_optimizer_step)
        # Fused optimizers take the scaler's found_inf and always "step"; read it instead.
        self._fused_amp = (
            bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
            and self.scaler.is_enabled()
        )
        self._pending: dict[str, list[Any]] = {"lr": [], "skipped": [], "samples": []}
        self._interval_start = time.perf_counter()
        self._stop_requested = False
        self._mid_step = False
        self.quiet = False  # set while a replay re-creates state: no instruments
        every_act = recipe.diagnostics.activation_every
        self.activations = ActivationSampler(self.model) if every_act else None
        self._grad_absmax: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self.guard = NonFiniteGuard(self)
        self.guard.can_replay = not self.fsdp  # FSDP: non-finite steps reported, not replayed
        self.ledger = RankLedger(self.dist) if self.dist is not None else None
        self._reduce = IntervalReducer(self.dist, self._rank_stats) if self.dist else None
        self._dist_broken = False  # a rank failed: no more collectives
        self._agreed_stop = False
        self._finishing = False
        self._oom_diagnosis: dict[str, Any] | None = None
        self._launch: list[str] = []  # the command-line options an OOM fix repeats
        if resume is not None:
            self._restore(load_checkpoint(resume))
            self._launch += ["--resume", str(resume)]
        if self.dist is not None and self.dist.world_size > 1:
            self._launch += ["--nproc-per-node", str(self.dist.world_size)]
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.start_step == 0 and self.main:  # a fresh run replaces earlier events here
            for old in self.out_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.tb = TensorBoardSink(self.out_dir, enabled=recipe.output.tensorboard and self.main)

    # ---- one optimizer step -------------------------------------------------------------
    def _on_optimizer_step(self, *_: Any) -> None:
        self._stepped = True

    def step(self) -> None:
        """One optimizer step over ``accum_steps`` micro-batches, instruments included."""
        step = self.step_count + 1
        cfg = self.recipe.train
        self._mid_step = True
        log_step = step % self.every == 0 or step == cfg.steps
        sampled = self._memory_step(step) and not self.quiet
        act = self._activation_step(step) and not self.quiet
        loss_sum: torch.Tensor | None = None
        samples = 0
        for micro in range(cfg.accum_steps):
            batch = to_device(self.data.next(), self.device)
            samples += batch_size(batch)
            with self._no_sync(last=micro == cfg.accum_steps - 1):
                with self.memory.phase("forward", sampled), self.memory.saved_tensors(sampled):
                    with autocast(self.recipe.precision, self.device), self._act_hooks(act):
                        loss = compute_loss(self.train_model, batch, self.loss_fn)
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                with self.memory.phase("backward", sampled):
                    self.scaler.scale(
                        loss / cfg.accum_steps if cfg.accum_steps > 1 else loss
                    ).backward()
        with self.memory.phase("optimizer", sampled):
            self.scaler.unscale_(self.optimizer)  # gradients are unscaled from here on
            norms = self.norms.record()
            if cfg.clip_grad_norm is not None:
                # FSDP: `norms` are the local shards'; clipping needs the full norms
                # (one all_reduce of n_params floats per step, only when clipping).
                self.norms.clip(global_norms(norms) if self.fsdp else norms, cfg.clip_grad_norm)
            if not self.quiet:
                self._maybe_histograms(step)
            if act:  # per-parameter max |grad| (unscaled) for fp16 headroom
                self._grad_absmax.append(
                    (
                        step,
                        self.norms.record_absmax(),
                        scale_tensor(self.scaler, self.device).clone(),
                    )
                )
            if log_step:
                self.norms.before_update()
            lr = float(self.optimizer.param_groups[0]["lr"])
            if (
                self.guard.guarding
                and not self.scaler.is_enabled()
                and self._nonfinite(norms, loss_sum)
            ):
                skipped = True  # on_nonfinite: skip — drop this update (one sync per step)
            else:
                self._stepped = False
                self.scaler.step(self.optimizer)
                skipped = self._was_skipped()
                self.scaler.update()
            if log_step:
                self.buffer.update = self.norms.after_update()
            if sampled:
                self.memory.end_sampled_step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
        if cfg.accum_steps > 1:
            loss_sum = loss_sum / cfg.accum_steps
        scale = scale_tensor(self.scaler, self.device).clone() if self.scaler.is_enabled() else None
        self.buffer.append(loss_sum, scale, norms)
        if self.scheduler is not None and not skipped:
            self.scheduler.step()  # never on a step the loss scaler skipped
        self._pending["lr"].append(lr)
        self._pending["skipped"].append(skipped)
        self._pending["samples"].append(samples)
        self.step_count = step
        self._mid_step = False

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager[None]:
        """Distributed: gradients are reduced only on the last micro-batch's backward."""
        if self.dist is None:
            return _NULL
        return no_sync(self.train_model, self.dist.strategy, last)

    def _shard(self, model: torch.nn.Module) -> None:
        shard_fsdp(model, self.device)

    def _rank_stats(self) -> tuple[int, int, bool, int]:
        """This rank's host values for the interval's collective (see IntervalReducer)."""
        peak = max(self.memory.peaks.values(), default=0)
        return peak, _rss_peak(), self._stop_requested, sum(self._pending["skipped"])

    def _act_hooks(self, active: bool) -> contextlib.AbstractContextManager[None]:
        return self.activations.hooks(True) if active and self.activations is not None else _NULL

    def _activation_step(self, step: int) -> bool:
        every = self.recipe.diagnostics.activation_every
        return every > 0 and (step - self.start_step == 1 or step % every == 0)

    def _memory_step(self, step: int) -> bool:
        """Memory is measured on the run's first two steps (optimizer state appears at the
        first) and every ``diagnostics.memory_every`` steps: peaks are steady after that."""
        every = self.recipe.diagnostics.memory_every
        return step - self.start_step <= 2 or (every > 0 and step % every == 0)

    def _nonfinite(self, norms: torch.Tensor, loss: torch.Tensor) -> bool:
        bad = ~(torch.isfinite(norms).all() & torch.isfinite(loss))
        if self.dist is not None:
            bad = any_rank(bad)  # every rank drops the same updates
        return bool(bad)  # syncs

    def _was_skipped(self) -> bool:
        if not self.scaler.is_enabled():
            return False
        if self._fused_amp:  # one extra sync per step, only for fused optimizers under fp16
            state = self.scaler._per_optimizer_states[id(self.optimizer)]
            return bool(sum(v.item() for v in state["found_inf_per_device"].values()))
        return not self._stepped

    def _maybe_histograms(self, step: int) -> None:
        every = self.recipe.diagnostics.histogram_every
        if self.histograms is None or step % every:
            return
        for module, (values, nonfinite) in self.histograms.sample().items():
            self.tb.histogram(f"grad_hist/{module}", values, step)
            if nonfinite:
                self.tb.scalar(f"grad_hist_nonfinite/{module}", nonfinite, step)

    # ---- once per log interval ----------------------------------------------------------
    def flush(self, check: bool = True) -> None:
        """Copy the interval's statistics to the host (the one sync) and write them out;
        with ``check``, a non-finite value found there starts the replay."""
        n = self.buffer.used
        if n == 0:
            return
        reduce = self._reduce if not self._dist_broken else None
        data = self.buffer.flush(reduce)  # distributed: the interval's one collective, inside
        now = time.perf_counter()
        step_s = (now - self._interval_start) / n
        self._interval_start = now
        first = self.step_count - n + 1
        steps = list(range(first, self.step_count + 1))
        skipped = list(self._pending["skipped"])
        if self.ledger is not None and data.extra is not None:
            self.ledger.absorb(data.extra, steps)  # per-rank memory, flags, stop requests
        self._record(steps, data, step_s)
        self._record_activations()
        self._write_events(steps, data, step_s)
        self.tb.flush()
        self.reporter.on_log(
            self.step_count,
            {
                "loss": float(data.loss[-1]),
                "loss_scale": float(data.scale[-1]) if self.scaler.is_enabled() else None,
                "step_s": step_s,
                "samples_per_s": self.history.samples_per_s[-1],
            },
        )
        for key in self._pending:
            self._pending[key].clear()
        bad = self.guard.first_bad_step(steps, data, skipped)
        if bad is not None and check:
            self.guard.handle(*bad)

    def _record_activations(self) -> None:
        """Move sampled activation / gradient-peak statistics to the history (small transfers,
        only at flushes that follow a sampled step)."""
        h = self.history
        if self.activations is not None and self.activations.samples and self.activations.absmax:
            window = self.activations.take()
            h.activation_steps.append(self.step_count)
            for name, value in window["absmax"].items():
                h.act_absmax.setdefault(name, []).append(value)
            for site, frac in window["dead"].items():
                h.dead_fraction.setdefault(site, []).append(frac)
            h.relu_units.update(window["units"])
            if not h.forward_order:
                h.forward_order = list(self.activations.order)
        for step, absmax, scale in self._grad_absmax:
            values = absmax.cpu().numpy()[self.index.unpermute]  # unscaled max |grad|
            per_module = np.zeros(len(self.index.modules))
            np.maximum.at(per_module, self.index.owner, values)
            h.grad_absmax_steps.append(step)
            h.grad_absmax.append(per_module.tolist())
            h.grad_absmax_scale.append(float(scale))
        self._grad_absmax.clear()

    def _record(self, steps: list[int], data: IntervalData, step_s: float) -> None:
        h = self.history
        module_norms = self.index.per_module(data.grad_norms)
        h.steps += steps
        h.loss += data.loss.tolist()
        h.lr += self._pending["lr"]
        h.loss_scale += data.scale.tolist()
        h.grad_norm_total += np.sqrt(
            np.square(data.grad_norms.astype(np.float64)).sum(axis=1)
        ).tolist()
        h.add_module_norms(steps, module_norms, ~np.asarray(self._pending["skipped"], dtype=bool))
        for i, (step, skipped) in enumerate(zip(steps, self._pending["skipped"])):
            if skipped:
                bad = [
                    self.index.names[j] for j in np.flatnonzero(~np.isfinite(data.grad_norms[i]))
                ]
                h.skipped_steps.append(step)
                h.overflow.append(
                    {
                        "step": step,
                        "scale_after": float(data.scale[i]),
                        "params": bad[:20],
                        "n_params": len(bad),
                    }
                )
        if data.param_norms.any():  # the interval's last step measured its update
            upd = self.index.per_module(data.update_norms[None])[0]
            par = self.index.per_module(data.param_norms[None])[0]
            h.update_ratio_steps.append(steps[-1])
            for name, u, p in zip(self.index.modules, upd, par):
                h.update_ratio.setdefault(name, []).append(float(u / p) if p > 0 else 0.0)
        h.step_time_s.append(step_s)
        h.samples_per_s.append(
            sum(self._pending["samples"]) / (step_s * len(steps)) if step_s > 0 else 0.0
        )
        h.step_time_steps.append(steps[-1])

    def _write_events(self, steps: list[int], data: IntervalData, step_s: float) -> None:
        """One TensorBoard event per step (all its scalars together): cheap enough per interval."""
        h, n, fp16 = self.history, len(steps), self.scaler.is_enabled()
        for i, step in enumerate(steps):
            values = {
                "loss": data.loss[i],
                "lr": h.lr[-n + i],
                "grad_norm/total": h.grad_norm_total[-n + i],
            }
            if fp16:
                values["loss_scale"] = data.scale[i]
            if i == n - 1:
                values.update(
                    {f"grad_norm/{m}": v for m, v in zip(self.index.modules, h.module_norms[-1])}
                )
                if h.update_ratio_steps and h.update_ratio_steps[-1] == step:
                    values.update({f"update_ratio/{m}": r[-1] for m, r in h.update_ratio.items()})
                values["time/step_s"] = step_s
                values["throughput/samples_per_s"] = h.samples_per_s[-1]
                if self.memory.updated:
                    self.memory.updated = False
                    values.update(
                        {
                            f"memory/{k}": v
                            for k, v in self.memory.summary().items()
                            if isinstance(v, int) and k != "device_total"
                        }
                    )
            self.tb.scalars(values, step)

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``train.steps``; always writes the report. Raises GradoctorError subclasses
        (with ``.result`` attached) for a failed or interrupted run."""
        t0 = time.perf_counter()
        status, raised = "completed", None
        if self.main:
            self._prepare_output()
        try:
            with (
                deterministic_mode(self.recipe.train.deterministic),
                self._sigint_as_stop_request(),
                self._sigterm_as_interrupt(),
            ):
                self.reporter.on_start(self._info())
                self._interval_start = time.perf_counter()
                self.guard.maybe_snapshot()
                while self.step_count < self.recipe.train.steps:
                    if self._should_stop():
                        raise KeyboardInterrupt
                    self.step()
                    self.reporter.on_step(self.step_count)
                    if self.buffer.used >= self.every or self.step_count == self.recipe.train.steps:
                        self.flush()
                        self.guard.maybe_snapshot()
                    every = self.recipe.train.checkpoint_every
                    if every and self.step_count % every == 0:
                        self.save()
        except StopRun:
            status = "stopped"
        except KeyboardInterrupt:
            status, raised = (
                "interrupted",
                TrainingInterrupted(
                    f"interrupted at step {self.step_count}; checkpoint and report saved in {self.out_dir}",
                    hint=f"continue with --resume {self.out_dir}",
                ),
            )
        except torch.OutOfMemoryError as exc:
            self._oom_diagnosis = self._explain_oom(exc)
            status, raised = (
                "failed",
                OutOfMemory(
                    f"out of memory at step {self.step_count + 1}: {str(exc).splitlines()[0]}",
                    hint="lower data.batch_size, use precision: bf16, or checkpoint activations (train.checkpoint)",
                ),
            )
        except GradoctorError as exc:
            status, raised = "failed", exc
        except Exception as exc:
            raised = UserCodeError(
                f"training step {self.step_count + 1} raised {type(exc).__name__}: {exc}",
                user_traceback=user_frames(exc),
            )
            status = "failed"
        finally:
            if self.dist is not None and status != "completed":
                raised = self._rank_outcome(status, raised)
            try:
                with self._sigterm_as_interrupt():
                    result = self._finish(status, raised, time.perf_counter() - t0)
            finally:
                if self.dist is not None:
                    self.dist.close()
        if raised is not None:
            raised.result = result  # type: ignore[attr-defined]
            raise raised
        return result

    def _finish(self, status: str, raised: BaseException | None, duration: float) -> TrainResult:
        """Flush, checkpoint (unless failed mid-step), write the report; leave nothing behind."""
        self._finishing = True  # distributed: a SIGTERM from torchrun now waits for the report
        with contextlib.suppress(Exception):
            self.flush(check=False)
        if status in ("completed", "stopped") or (status == "interrupted" and not self._mid_step):
            if not (self.fsdp and self._dist_broken):  # FSDP's save gathers from every rank
                self.save()  # never a checkpoint of a half-done step
        self._undo_checkpointing()
        self._hook.remove()
        result = self.result(
            status, str(raised) if raised and status == "failed" else None, duration
        )
        result.diagnoses = self.diagnoses() + ([self._oom_diagnosis] if self._oom_diagnosis else [])
        for i, d in enumerate(result.diagnoses):
            self.tb.text(
                "diagnoses",
                f"**{d['severity']}** `{d['code']}` {d['message']}  \nfix: {d['fix']}",
                i,
            )
        if self.main:
            write_json_atomic(self.out_dir / "report.json", result.to_dict())
        self.tb.close()
        self.reporter.on_end(result)
        return result

    def _explain_oom(self, exc: BaseException) -> dict[str, Any] | None:
        """The ``memory`` diagnosis for an OOM: breakdown and fixes from the memory planner."""
        from gradoctor.memory.oom import oom_diagnosis

        self.optimizer.zero_grad(set_to_none=True)  # give back what the failed step held
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            return oom_diagnosis(
                self.model,
                self.recipe,
                self.device,
                exc,
                step=self.step_count + 1,
                launch=self._launch,
            )
        except Exception:  # never lose the report over the explanation
            return None

    def diagnoses(self) -> list[dict[str, Any]]:
        """Run the triage rules over the history (host-side, at the end of the run)."""
        ctx = RunContext(
            history=self.history.to_dict(),
            findings=self.guard.findings,
            modules=module_infos(self.model, self.index.modules),
            precision=self.recipe.precision,
            thresholds=self.recipe.diagnostics.thresholds,
            growth_interval=self.recipe.grad_scaler.growth_interval,
            backoff_factor=self.recipe.grad_scaler.backoff_factor,
        )
        return diagnose(ctx)

    def result(
        self, status: str = "completed", error: str | None = None, duration: float = 0.0
    ) -> TrainResult:
        h = self.history
        totals = [
            v
            for v, s in zip(h.grad_norm_total, h.steps)
            if s not in set(h.skipped_steps) and math.isfinite(v)
        ]
        mean_step = float(np.mean(h.step_time_s[1:] or h.step_time_s)) if h.step_time_s else None
        return TrainResult(
            steps_completed=max(self.step_count, h.steps[-1] if h.steps else 0),
            final_loss=h.loss[-1] if h.loss else None,
            skipped_steps=list(h.skipped_steps),
            loss_scale=h.loss_scale[-1] if h.loss_scale and self.scaler.is_enabled() else None,
            grad_norms=h.grad_norm_summary(),
            memory=self.memory.summary(),
            diagnoses=[],
            recipe=self.recipe.to_dict(),
            device=str(self.device),
            precision=self.recipe.precision,
            duration_s=duration,
            status=status,
            error=error,
            output_dir=str(self.out_dir),
            start_step=self.start_step,
            grad_norm_total={
                "last": h.grad_norm_total[-1] if h.grad_norm_total else None,
                "max": max(totals) if totals else None,
                "median": float(np.median(totals)) if totals else None,
            },
            update_ratios={k: v[-1] for k, v in h.update_ratio.items()},
            overflow=list(h.overflow),
            nonfinite=list(self.guard.findings),
            throughput={
                "step_s": mean_step,
                "samples_per_s": float(np.mean(h.samples_per_s[1:] or h.samples_per_s))
                if h.samples_per_s
                else None,
            },
            history=h.to_dict(),
            versions={"gradoctor": gradoctor.__version__, "torch": torch.__version__},
            distributed=self.ledger.summary() if self.ledger is not None else None,
            model=self.model,
        )

    # ---- checkpoints --------------------------------------------------------------------
    def save(self) -> None:
        """Write a resumable checkpoint atomically (model, optimizer, scaler, scheduler, RNG, data position).

        Distributed: rank 0 writes the unwrapped model's state (DDP: the same keys as a
        single-process run). FSDP: every rank takes part in gathering the full (unsharded)
        model and optimizer state to rank 0's CPU memory first."""
        if self.fsdp:
            model_state, optim_state = full_state_dicts(self.model, self.optimizer)
        elif not self.main:
            return
        else:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        if not self.main:
            return
        state = {
            "format": 1,
            "step": self.step_count,
            "model": model_state,
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": capture_rng(),
            "data": self.data.state(),
            "history": self.history.to_dict(),
        }
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, state)

    def _restore(self, state: dict[str, Any]) -> None:
        if self.fsdp:  # full state on every rank -> this rank's shards
            load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.data.restore(state["data"])
        restore_rng(state["rng"])
        self.step_count = self.start_step = int(state["step"])
        self.history = History.from_dict(state["history"])

    # ---- helpers ------------------------------------------------------------------------
    def _prepare_output(self) -> None:
        (self.out_dir / "recipe.yaml").write_text(
            yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
        )

    def _info(self) -> dict[str, Any]:
        return {
            "steps": self.recipe.train.steps,
            "start_step": self.start_step,
            "device": str(self.device),
            "precision": self.recipe.precision,
            "output_dir": str(self.out_dir),
            "recipe": self.recipe.name,
        }

    # ---- distributed: agreement and failure ---------------------------------------------
    def _should_stop(self) -> bool:
        """Ctrl-C: alone, at the next step; distributed, at the first step boundary after a
        flush where any rank had asked (so every rank stops at the same step)."""
        if self.ledger is None:
            return self._stop_requested
        self._agreed_stop = self.ledger.stop_requested
        return self._agreed_stop

    def _sigterm_as_interrupt(self) -> contextlib.AbstractContextManager[None]:
        if self.dist is None:
            return _NULL
        return sigterm_as_interrupt(lambda: self._finishing)

    def _rank_outcome(self, status: str, raised: BaseException | None) -> Any:
        """A run that did not complete, distributed: unless every rank stopped at the same
        step (non-finite stop, agreed Ctrl-C), the ranks are out of step, so no more
        collectives. A failure is posted for the other ranks; a rank whose failure was
        caused by another's (its collective lost the peer) reports that rank's message."""
        assert self.dist is not None
        if status == "stopped" or (status == "interrupted" and self._agreed_stop):
            return raised
        self._dist_broken = True
        if status != "failed":
            return raised
        posted = read_failure()
        if posted is None or posted["rank"] == self.dist.rank:
            post_failure(self.dist.rank, str(raised))
            return raised
        return UserCodeError(
            f"rank {posted['rank']} failed: {posted['message']}",
            hint=f"rank {self.dist.rank} stopped because rank {posted['rank']} raised",
        )

    @contextlib.contextmanager
    def _sigint_as_stop_request(self) -> Iterator[None]:
        """First Ctrl-C: stop at the next step boundary (consistent checkpoint). Second: now."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


__all__ = ["Trainer"]
