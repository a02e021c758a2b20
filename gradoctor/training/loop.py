"""The instrumented training loop.

Reads top to bottom: ``Trainer(recipe)`` builds the run state (``TrainState``), the one step
(``TrainStep``), the instruments and the record; ``step()`` runs one optimizer step with the
instruments attached; ``run()`` loops, flushes once per log interval and always finishes
with the report written, the events flushed and a checkpoint of the last completed step saved
(a failed run: when its failing step could be undone, see ``training/rewind.py``).

Host<->device syncs: one per log interval (``Recorder.flush``), one per histogram interval,
and the one ``GradScaler.step`` makes itself under fp16. Nothing per layer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from gradoctor.distributed.aggregate import IntervalReducer, RankLedger, any_rank, global_norms
from gradoctor.distributed.context import setup_distributed
from gradoctor.errors import GradoctorError, RecipeError, RecipeProblem
from gradoctor.monitors.grad_norms import GradNormRecorder, ParamIndex
from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.monitors.interval import IntervalCollector
from gradoctor.monitors.memory import MemoryMonitor, rss_peak
from gradoctor.recipe.schema import Recipe
from gradoctor.sinks.report_json import write_json_atomic
from gradoctor.sinks.tensorboard import TensorBoardSink
from gradoctor.training.build import build_state
from gradoctor.training.checkpoint_io import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from gradoctor.training.environment import deterministic_mode, pick_device
from gradoctor.training.failures import (
    ExplainOOM,
    explain_oom,
    interrupted,
    out_of_memory,
    user_error,
)
from gradoctor.training.guard import Decision, NonFiniteGuard, StopRun
from gradoctor.training.history import History
from gradoctor.training.instruments import default_instruments
from gradoctor.training.progress import Reporter
from gradoctor.training.recorder import Recorder
from gradoctor.training.result import TrainResult, build_result
from gradoctor.training.rewind import Rewind
from gradoctor.training.run_control import RunControl
from gradoctor.training.run_folder import claim_run_folder
from gradoctor.training.run_lock import RunLock
from gradoctor.training.schedule_rehearsal import rehearse_schedule
from gradoctor.training.state import TrainState
from gradoctor.training.step import StepConfig, TrainStep

_NULL = contextlib.nullcontext()

# (history, findings, model, module names, recipe) -> diagnoses; injected by the API layer.
Triage = Callable[[History, list[dict[str, Any]], torch.nn.Module, list[str], Recipe], list]


# (recipe, state, TensorBoard sink, distributed) -> instruments to add to the default ones
ExtraInstruments = Callable[[Recipe, TrainState, TensorBoardSink, bool], list[Instrument]]


class Trainer:
    """One run of a recipe. ``resume`` is a run folder (or checkpoint file) to continue from;
    ``extra_instruments(recipe, state, tb, distributed)`` adds instruments after the
    default ones (the API layer passes the sharpness instrument); ``overwrite`` lets a fresh
    run replace a previous run's outputs in its folder (else
    refused, see ``training/run_folder.py``); ``triage`` and ``explain_oom`` turn the run into diagnoses (``gradoctor.api`` passes
    the rules and the memory planner; without them the report has no diagnoses)."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        reporter: Reporter | None = None,
        resume: Path | None = None,
        triage: Triage | None = None,
        explain_oom: ExplainOOM | None = None,
        overwrite: bool = False,
        extra_instruments: ExtraInstruments | None = None,
    ):
        self.recipe = recipe
        self.out_dir = recipe.output_dir()
        self._triage, self._explain_oom = triage, explain_oom
        self._overwrite = overwrite  # a fresh run may replace a previous run's outputs
        # Distributed (torchrun, or a `distributed:` block): this rank's context, else None.
        self.dist = setup_distributed(recipe.distributed, recipe.train.device)
        self.main = self.dist is None or self.dist.is_main  # rank 0 writes every output
        self.fsdp = self.dist is not None and self.dist.strategy == "fsdp"
        # progress and the report come from rank 0 only
        self.reporter = (reporter if self.main else None) or Reporter()
        self.device = self.dist.device if self.dist else pick_device(recipe.train.device)
        self.every = recipe.diagnostics.every
        self.state, self._undo_checkpointing = build_state(recipe, self.device, self.dist)
        self.index = ParamIndex(self.state.model)
        self.norms = GradNormRecorder(self.index, self.device)
        strategy = self.dist.strategy if self.dist is not None else None
        self.stepper = TrainStep(
            self.state,
            StepConfig.from_recipe(recipe, strategy),
            norms=self.norms,
            norm_reduce=global_norms if self.fsdp else None,  # FSDP clips by global norms
            # a failed step is undone and the last completed one checkpointed (one process)
            rewind=Rewind(self.state) if self.dist is None else None,
        )
        self.memory = MemoryMonitor(self.device, self.index.params)
        self.guard = NonFiniteGuard(
            recipe.diagnostics, self.device, fp16=self.fp16, can_replay=not self.fsdp
        )
        self.ledger = RankLedger(self.dist) if self.dist is not None else None
        self._reduce = IntervalReducer(self.dist, self._rank_stats) if self.dist else None
        self.control = RunControl(self.dist, self.ledger)
        self._mid_step = False
        self._guarding = False  # on_nonfinite: skip, after the replay: drop non-finite updates
        self._oom_diagnosis: dict[str, Any] | None = None
        self._launch: list[str] = []  # the command-line options an OOM fix repeats
        history = History(self.index.modules)
        if resume is not None:
            history = self._restore(load_checkpoint(resume))
            self._launch += ["--resume", str(resume)]
        if self.dist is not None and self.dist.world_size > 1:
            self._launch += ["--nproc-per-node", str(self.dist.world_size)]
        self._lock = RunLock(self.out_dir)
        self._prepare_output_dir()  # takes the folder's lock (main rank)
        try:
            tb = TensorBoardSink(self.out_dir, enabled=recipe.output.tensorboard and self.main)
            buffer = IntervalCollector(len(self.index), self.index.unpermute, self.device)
            self.record = Recorder(self.index, buffer, history, tb, self.reporter, self.fp16)
            self.instruments = default_instruments(
                recipe, self.state, self.index, self.norms, self.memory, buffer, tb
            )
            if extra_instruments is not None:  # e.g. sharpness (the API layer's, from hessian/)
                self.instruments += extra_instruments(recipe, self.state, tb, self.dist is not None)
        except BaseException:
            self._lock.release()
            raise

    @property
    def fp16(self) -> bool:
        return self.state.scaler.is_enabled()

    @property
    def history(self) -> History:
        return self.record.history

    @property
    def step_count(self) -> int:
        return self.state.step

    # ---- one optimizer step ---------------------------------------------------------------
    def step(self) -> None:
        """One optimizer step over ``accum_steps`` micro-batches, instruments included."""
        self._mid_step = True
        drop = self._nonfinite_update if self._guarding else None
        self.record.add(self.stepper.run(self.instruments, drop_update=drop))
        self._mid_step = False

    def _rerun(self) -> None:
        """A step that only re-creates state (replay): no instruments, nothing recorded."""
        self.stepper.run()

    def _nonfinite_update(self, view: StepView, loss: torch.Tensor) -> bool:
        """on_nonfinite: skip — drop this update (one sync per step)."""
        bad = ~(torch.isfinite(view.grad_norms()).all() & torch.isfinite(loss))
        if self.dist is not None:
            bad = any_rank(bad)  # every rank drops the same updates
        return bool(bad)  # syncs

    def _rank_stats(self) -> tuple[int, int, bool, int]:
        """This rank's host values for the interval's collective (see IntervalReducer)."""
        peak = max(self.memory.peaks.values(), default=0)
        return peak, rss_peak(), self.control.stop_requested, sum(self.record.skipped)

    # ---- once per log interval ------------------------------------------------------------
    def flush(self, check: bool = True) -> None:
        """The interval's host copy and records; with ``check``, a non-finite value found
        there starts the replay (which may end the run with StopRun)."""
        absorb = self.ledger.absorb if self.ledger is not None else None
        reduce = self._reduce if not self.control.dist_broken else None
        flushed = self.record.flush(self.state.step, self.instruments, reduce, absorb)
        if flushed is None:
            return
        bad = self.guard.first_bad_step(flushed.steps, flushed.data, flushed.skipped)
        if bad is not None and check:
            config = self.stepper.config
            self._apply(self.guard.handle(*bad, self.state, config, self._rerun, self.ledger))

    def _apply(self, decision: Decision | None) -> None:
        if decision is None or decision.action == "report":
            return
        if decision.action == "stop":
            raise StopRun
        self.history.truncate(decision.bad_step - 1)
        if decision.action == "skip":
            self.history.dropped_steps.append(decision.bad_step)
            self._guarding = True

    # ---- the run --------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``train.steps``; always writes the report. Raises GradoctorError subclasses
        (with ``.result`` attached) for a failed or interrupted run."""
        t0 = time.perf_counter()
        status, raised = "completed", None
        if self.main:
            (self.out_dir / "recipe.yaml").write_text(
                yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
            )
        try:
            with (
                deterministic_mode(self.recipe.train.deterministic),
                self.control.stop_signals_as_requests(),
                self.control.sigterm_as_interrupt(),
            ):
                self._train()
        except StopRun:
            status = "stopped"
        except KeyboardInterrupt:
            status = "interrupted"
            raised = interrupted(
                self.state.step, self.out_dir, self.control.stop_signal, self._mid_step
            )
        except torch.OutOfMemoryError as exc:
            self._oom_diagnosis = explain_oom(
                self._explain_oom, self.state, self.recipe, exc, self._launch
            )
            status, raised = "failed", out_of_memory(exc, self.state.step + 1)
            self._undo_failed_step()
        except GradoctorError as exc:
            status, raised = "failed", exc
            self._undo_failed_step()
        except Exception as exc:
            status, raised = "failed", user_error(exc, self.state.step + 1, self.recipe)
            self._undo_failed_step()
        finally:
            if self.dist is not None and status != "completed":
                raised = self.control.rank_outcome(status, raised)
            try:
                with self.control.sigterm_as_interrupt():
                    result = self._finish(status, raised, time.perf_counter() - t0)
            finally:
                self._lock.release()
                if self.dist is not None:
                    self.dist.close()
        if raised is not None:
            raised.result = result  # type: ignore[attr-defined]
            raise raised
        return result

    def _undo_failed_step(self) -> None:
        """A step that failed before its optimizer step began is undone (data position,
        RNGs, buffers), so the run ends at the last completed step and is checkpointed."""
        rewind = self.stepper.rewind
        if self._mid_step and rewind is not None and not self.stepper.update_began:
            if rewind.undo():
                self._mid_step = False

    def _train(self) -> None:
        steps = self.recipe.train.steps
        rehearse_schedule(self.state.scheduler, self.state.optimizer, self.state.step, steps)
        self.reporter.on_start(self._info())
        self.record.interval_start = time.perf_counter()
        self.guard.maybe_snapshot(self.state)
        while self.state.step < steps:
            if self.control.should_stop():
                raise KeyboardInterrupt
            self.step()
            self.reporter.on_step(self.state.step)
            if self.record.used >= self.every or self.state.step == steps:
                self.flush()
                self.guard.maybe_snapshot(self.state)
            every = self.recipe.train.checkpoint_every
            if every and self.state.step % every == 0:
                self.flush()  # the checkpoint's history reaches its step: a resume has no gap
                self.save()

    def _finish(self, status: str, raised: BaseException | None, duration: float) -> TrainResult:
        """Flush, checkpoint (unless failed mid-step), write the report; leave nothing behind."""
        self.control.finishing = (
            True  # distributed: a SIGTERM from torchrun now waits for the report
        )
        with contextlib.suppress(Exception):
            self.flush(check=False)
        if status in ("completed", "stopped") or (status == "interrupted" and not self._mid_step):
            if not (self.fsdp and self.control.dist_broken):  # FSDP's save gathers from every rank
                self.save()  # never a checkpoint of a half-done step
        elif status == "failed" and self.dist is None:
            self._save_failed(raised)
        self._undo_checkpointing()
        self.stepper.close()
        result = self.result(
            status, str(raised) if raised and status == "failed" else None, duration
        )
        result.diagnoses = self.diagnoses() + ([self._oom_diagnosis] if self._oom_diagnosis else [])
        tb = self.record.tb
        for i, d in enumerate(result.diagnoses):
            tb.text(
                "diagnoses",
                f"**{d['severity']}** `{d['code']}` {d['message']}  \nfix: {d['fix']}",
                i,
            )
        if self.main:
            write_json_atomic(self.out_dir / "report.json", result.to_dict())
        tb.close()
        self.reporter.on_end(result)
        return result

    def diagnoses(self) -> list[dict[str, Any]]:
        """The triage rules over the history (host-side, at the end of the run)."""
        if self._triage is None:
            return []
        return self._triage(
            self.history, self.guard.findings, self.state.model, self.index.modules, self.recipe
        )

    def result(
        self, status: str = "completed", error: str | None = None, duration: float = 0.0
    ) -> TrainResult:
        return build_result(
            self.history,
            status=status,
            error=error,
            duration=duration,
            steps_completed=self.state.step,
            start_step=self.state.start_step,
            fp16=self.fp16,
            memory=self.memory.summary(),
            recipe=self.recipe,
            device=self.device,
            out_dir=self.out_dir,
            nonfinite=self.guard.findings,
            distributed=self.ledger.summary() if self.ledger is not None else None,
            model=self.state.model,
        )

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self) -> None:
        """Write a resumable checkpoint atomically: the run state and the history.

        Distributed: rank 0 writes the unwrapped model's state (DDP: the same keys as a
        single-process run). FSDP: every rank takes part in gathering the full state first."""
        if not (self.main or self.fsdp):
            return
        state = self.state.state_dict()
        if self.main:
            state["history"] = self.history.to_dict()
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, state)

    def _save_failed(self, raised: BaseException | None) -> bool:
        """A failed run's checkpoint: of the last completed step, when the failing step was
        undone (or the failure came between steps); the error's fix says how to resume."""
        if not isinstance(raised, GradoctorError) or self.state.step == 0:
            return False
        if self._mid_step:
            earlier = (self.out_dir / CHECKPOINT_NAME).is_file()
            note = (
                f"step {self.state.step + 1} failed after its optimizer step had changed the "
                "weights, so no checkpoint of it was written"
                + (
                    "; an earlier checkpoint (train.checkpoint_every) is in the run folder"
                    if earlier
                    else ""
                )
            )
            raised.hint = f"{raised.hint}; {note}" if raised.hint else note
            return False
        try:
            self.save()
        except Exception:  # the report matters more: never hide the user's error
            return False
        resume = (
            f"after the fix, continue from step {self.state.step} (checkpoint saved) with "
            f"--resume {self.out_dir}"
        )
        raised.hint = f"{raised.hint}; {resume}" if raised.hint else resume
        return True

    def _restore(self, checkpoint: dict[str, Any]) -> History:
        self.state.load_state_dict(checkpoint)
        self.state.start_step = self.state.step
        return History.from_dict(checkpoint["history"])

    # ---- helpers --------------------------------------------------------------------------
    def _prepare_output_dir(self) -> None:
        if not self.main:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecipeError(
                [
                    RecipeProblem(
                        "output.dir",
                        f"cannot create the output folder '{self.out_dir}': {exc.strerror or exc}",
                        hint="choose a folder path that can be created (not a file, not under one)",
                    )
                ]
            ) from None
        self._lock.acquire()  # before anything in the folder is touched
        if self.state.start_step == 0:
            try:
                claim_run_folder(self.out_dir, overwrite=self._overwrite)
            except BaseException:
                self._lock.release()
                raise

    def _info(self) -> dict[str, Any]:
        return {
            "steps": self.recipe.train.steps,
            "start_step": self.state.start_step,
            "device": str(self.device),
            "precision": self.recipe.precision,
            "output_dir": str(self.out_dir),
            "recipe": self.recipe.name,
        }


__all__ = ["Trainer"]
