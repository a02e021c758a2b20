"""One recorded run, in its own process: the recipe's first N optimizer steps through the
training step (``training.step.TrainStep``) with the op-digest recorder attached.

``gradoctor repro`` starts two (or more) of these with ``python -m gradoctor repro-worker
SPEC`` (a hidden command) so that each run starts from a fresh interpreter: lazily
initialised globals, allocator state and clock-seeded generators are those of a new process,
as in a user's next run. The spec (JSON) holds the resolved recipe, the steps, whether to run
under ``torch.use_deterministic_algorithms(True)`` and which record to capture; the output
(``torch.save``) holds the op stream, the captured tensors, the timing (or, for a timing
worker, the deterministic-mode cost) and, when the user's code raised, the error (its class, message, hint and the user's frames) for the parent to
raise again.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradoctor.devices import pick_device
from gradoctor.errors import GradoctorError, RecipeError, UsageError, UserCodeError
from gradoctor.recipe.schema import Recipe
from gradoctor.recipe.validate import build_recipe
from gradoctor.reproducibility.recorder import OpDigestRecorder
from gradoctor.reproducibility.stream import OpStream
from gradoctor.training.build import build_state
from gradoctor.training.environment import deterministic_mode
from gradoctor.training.failures import user_error
from gradoctor.training.step import StepConfig, TrainStep


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker runs. ``capture``: ``[step, index within the step]`` or None."""

    recipe: dict[str, Any]
    base_dir: str
    name: str
    steps: int
    deterministic: bool = False
    capture: tuple[int, int] | None = None
    record: bool = True
    timing: bool = False  # instead: time plain steps, ordinary vs deterministic mode

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        raw = json.loads(path.read_text())
        if raw.get("capture") is not None:
            raw["capture"] = tuple(raw["capture"])
        return cls(**raw)


def _recipe(spec: WorkerSpec) -> Recipe:
    return build_recipe(spec.recipe, name=spec.name, base_dir=Path(spec.base_dir))


def recorded_run(
    recipe: Recipe,
    steps: int,
    *,
    deterministic: bool = False,
    capture: tuple[int, int] | None = None,
    record: bool = True,
) -> tuple[OpStream, list[torch.Tensor] | None]:
    """Run ``steps`` optimizer steps of ``recipe`` (one process, its device) with the
    recorder (``record=False``: without, for timing a plain run); returns the stream (its
    ``step_seconds`` are wall seconds per step, the digests' host copy included) and the
    captured tensors. Raises the user's exception as UserCodeError."""
    device = pick_device(recipe.train.device)
    with deterministic_mode(deterministic or recipe.train.deterministic):
        state, undo = build_state(recipe, device)
        stepper = TrainStep(state, StepConfig.from_recipe(recipe))
        recorder = OpDigestRecorder(state.model, capture=capture)
        recorder.stream.device = str(device)
        instruments = [recorder] if record else []
        try:
            for _ in range(steps):
                t0 = time.perf_counter()
                try:
                    outcome = stepper.run(instruments)
                except GradoctorError:
                    raise
                except Exception as exc:
                    raise user_error(exc, state.step + 1, recipe) from exc
                if not record:
                    outcome.loss.item()  # the recorder's one sync per step, for a fair time
                recorder.stream.step_seconds.append(time.perf_counter() - t0)
        finally:
            recorder.close()
            stepper.close()
            undo()
    return recorder.stream, recorder.captured


def deterministic_cost(recipe: Recipe, steps: int, rounds: int = 2) -> float:
    """Median step time in deterministic mode over the ordinary one, side by side in one
    process: ``rounds`` x (``steps`` ordinary steps, ``steps`` deterministic steps) of one
    run state, plain (no recorder), each step ending in a host sync; the first step of each
    block is left out (kernel selection, caches)."""
    device = pick_device(recipe.train.device)
    state, undo = build_state(recipe, device)
    stepper = TrainStep(state, StepConfig.from_recipe(recipe))
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(rounds):
            for det in (False, True):
                with deterministic_mode(det):
                    for i in range(steps + 1):
                        t0 = time.perf_counter()
                        try:
                            stepper.run([]).loss.item()
                        except Exception as exc:
                            raise user_error(exc, state.step + 1, recipe) from exc
                        if i:
                            times[det].append(time.perf_counter() - t0)
    finally:
        stepper.close()
        undo()
    return statistics.median(times[True]) / statistics.median(times[False])


def _error_dict(exc: GradoctorError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    if isinstance(exc, UserCodeError):
        out["user_traceback"] = exc.user_traceback
        cause = exc.__cause__
        out["cause"] = f"{type(cause).__name__}: {cause}" if cause is not None else None
    return out


def error_from_dict(raw: dict[str, Any]) -> GradoctorError:
    """The worker's error, raised again in the parent process."""
    if raw["type"] == "UserCodeError":
        return UserCodeError(
            raw["message"], user_traceback=raw.get("user_traceback") or "", hint=raw.get("hint")
        )
    if raw["type"] in ("UsageError", "RecipeError"):
        return UsageError(raw["message"], hint=raw.get("hint"))
    return GradoctorError(raw["message"], hint=raw.get("hint"))


def run_worker(spec_path: Path, out_path: Path) -> None:
    """The worker process's body: read the spec, run, save the output (module docstring).
    A GradoctorError is saved and raised again (the CLI turns it into the exit code)."""
    spec = WorkerSpec.read(spec_path)
    out: dict[str, Any] = {}
    try:
        try:
            recipe = _recipe(spec)
        except RecipeError as exc:
            raise UsageError(str(exc)) from exc
        if spec.timing:
            out = {"time_ratio": deterministic_cost(recipe, spec.steps)}
            return
        stream, captured = recorded_run(
            recipe,
            spec.steps,
            deterministic=spec.deterministic,
            capture=spec.capture,
            record=spec.record,
        )
        stream_path = out_path.with_suffix(".stream.pt")
        stream.save(stream_path)
        out = {"stream": str(stream_path), "captured": captured}
    except GradoctorError as exc:
        out = {"error": _error_dict(exc)}
        raise
    except BaseException as exc:  # gradoctor's own failure: saved, so the parent can say it
        out = {
            "error": {
                "type": "internal",
                "message": f"{type(exc).__name__}: {exc}",
                "hint": "this is gradoctor's failure, not your code's: please report it",
            }
        }
        raise
    finally:
        torch.save(out, out_path)


__all__ = ["WorkerSpec", "deterministic_cost", "error_from_dict", "recorded_run", "run_worker"]
