"""The Python API behind every command (the CLI calls only these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradoctor.recipe import Recipe, load_recipe
from gradoctor.sinks.report_json import read_json
from gradoctor.training.loop import Trainer
from gradoctor.training.progress import Reporter
from gradoctor.training.result import TrainResult


def make_trainer(
    recipe: Recipe,
    *,
    reporter: Reporter | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> Trainer:
    """A ``Trainer`` with the triage rules, the OOM explainer, the sharpness instrument and the
    first step's numerics audit attached (what ``train``
    runs; the distributed test workers and the benchmarks build theirs here too)."""
    from gradoctor.diagnose.engine import diagnose_run
    from gradoctor.hessian.sharpness_instrument import sharpness_instruments
    from gradoctor.memory.oom import oom_diagnosis
    from gradoctor.numerics.train_audit import audit_instruments

    def extra(recipe: Recipe, state: Any, tb: Any, distributed: bool) -> list[Any]:
        return sharpness_instruments(recipe, state, tb, distributed) + audit_instruments(
            recipe, state, tb, distributed
        )

    return Trainer(
        recipe,
        reporter=reporter,
        resume=Path(resume) if resume is not None else None,
        triage=diagnose_run,
        explain_oom=oom_diagnosis,
        overwrite=overwrite,
        extra_instruments=extra,
    )


def train(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    cli_overrides: list[str] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a recipe and return its :class:`TrainResult` (the content of ``report.json``).

    ``overrides`` change recipe keys: ``train(r, precision="bf16", train={"steps": 20})`` or
    ``train(r, train__steps=20)``; ``cli_overrides`` takes ``["train.steps=20"]`` strings.
    ``resume`` is a run folder (or checkpoint file) to continue from. A fresh run into a
    folder that holds a previous run's outputs raises UsageError unless ``overwrite`` (which
    deletes them first). Silent unless a
    ``reporter`` is given. Raises RecipeError (bad recipe), UserCodeError (your code raised),
    TrainingInterrupted (Ctrl-C) or OutOfMemory; each carries ``.result`` once training began.
    """
    merged: dict[str, Any] = {}
    if overrides:
        merged.update(overrides)
    loaded = load_recipe(recipe, cli_overrides or None)
    if merged:
        loaded = load_recipe(loaded, merged)
    return make_trainer(loaded, reporter=reporter, resume=resume, overwrite=overwrite).run()


def validate(
    recipe: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> Recipe:
    """Check a recipe without training: every problem at once, as one RecipeError."""
    return load_recipe(recipe, overrides)


def load_report(run_dir: str | Path) -> TrainResult:
    """Read a run folder's ``report.json`` back into a :class:`TrainResult`."""
    from gradoctor.errors import UsageError

    path = Path(run_dir)
    path = path / "report.json" if path.is_dir() else path
    if not path.is_file():
        raise UsageError(
            f"no report.json at '{run_dir}'", hint="pass a run folder written by `gradoctor train`"
        )
    return TrainResult.from_dict(read_json(path))
