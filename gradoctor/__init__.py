"""gradoctor: a doctor for PyTorch training.

Python API (the CLI calls these):

- ``gradoctor.train(recipe, **overrides) -> TrainResult``
- ``gradoctor.validate(recipe) -> Recipe``
- ``gradoctor.load_recipe(recipe, overrides) -> Recipe``
- ``gradoctor.load_report(run_dir) -> TrainResult``
- ``gradoctor.memory_profile(recipe, ...) -> MemoryProfile``
- ``gradoctor.curvature(recipe, ...) -> CurvatureResult`` and
  ``gradoctor.hessian_spectrum(model, loss_fn, batches, ...) -> CurvatureResult``
- ``gradoctor.check_grads(fn_or_module, inputs) -> CaseResult`` (and ``assert_grads_correct``)
- ``gradoctor.repro(recipe, ...) -> ReproResult``
- ``gradoctor.audit(recipe, ...) -> AuditResult``
- ``gradoctor.explain(model, inputs, ...) -> Explanation`` and
  ``gradoctor.explain_recipe(recipe, ...) -> ExplainResult``

The names that need torch load on first use (PEP 562), so ``import gradoctor.cli`` and
``gradoctor --help`` stay free of torch. Modules inside the package never import this root
module: they import what they use by its dotted name (``gradoctor.version`` for the version).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradoctor.errors import (
    GradoctorError,
    OutOfMemory,
    RecipeError,
    RecipeProblem,
    TrainingInterrupted,
    UsageError,
    UserCodeError,
)
from gradoctor.version import __version__

if TYPE_CHECKING:  # the same names, for type checkers and the import graph
    from gradoctor.api import load_report, train, validate
    from gradoctor.attribution.api import Explanation, explain
    from gradoctor.attribution.recipe_explain import ExplainResult, explain_recipe
    from gradoctor.gradcheck import Case, assert_grads_correct, check_grads
    from gradoctor.hessian import CurvatureResult, hessian_spectrum
    from gradoctor.hessian.recipe_curvature import curvature
    from gradoctor.memory import memory_profile
    from gradoctor.numerics.api import audit
    from gradoctor.numerics.result import AuditResult
    from gradoctor.recipe import Recipe, load_recipe
    from gradoctor.reproducibility.api import repro
    from gradoctor.reproducibility.result import ReproResult
    from gradoctor.training.result import TrainResult

_LAZY = {
    "load_report": "gradoctor.api",
    "train": "gradoctor.api",
    "validate": "gradoctor.api",
    "Case": "gradoctor.gradcheck",
    "assert_grads_correct": "gradoctor.gradcheck",
    "check_grads": "gradoctor.gradcheck",
    "memory_profile": "gradoctor.memory",
    "curvature": "gradoctor.hessian.recipe_curvature",
    "hessian_spectrum": "gradoctor.hessian",
    "CurvatureResult": "gradoctor.hessian",
    "Recipe": "gradoctor.recipe",
    "repro": "gradoctor.reproducibility.api",
    "audit": "gradoctor.numerics.api",
    "explain": "gradoctor.attribution.api",
    "Explanation": "gradoctor.attribution.api",
    "ExplainResult": "gradoctor.attribution.recipe_explain",
    "explain_recipe": "gradoctor.attribution.recipe_explain",
    "AuditResult": "gradoctor.numerics.result",
    "ReproResult": "gradoctor.reproducibility.result",
    "load_recipe": "gradoctor.recipe",
    "TrainResult": "gradoctor.training.result",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, with the lazy ones not yet loaded."""
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuditResult",
    "Case",
    "CurvatureResult",
    "ExplainResult",
    "Explanation",
    "GradoctorError",
    "OutOfMemory",
    "Recipe",
    "RecipeError",
    "RecipeProblem",
    "ReproResult",
    "TrainResult",
    "TrainingInterrupted",
    "UsageError",
    "UserCodeError",
    "__version__",
    "assert_grads_correct",
    "audit",
    "check_grads",
    "curvature",
    "explain",
    "explain_recipe",
    "hessian_spectrum",
    "load_recipe",
    "load_report",
    "memory_profile",
    "repro",
    "train",
    "validate",
]
