"""gradoctor: a doctor for PyTorch training.

Python API (the CLI calls these):

- ``gradoctor.train(recipe, **overrides) -> TrainResult``
- ``gradoctor.validate(recipe) -> Recipe``
- ``gradoctor.load_recipe(recipe, overrides) -> Recipe``
- ``gradoctor.load_report(run_dir) -> TrainResult``
- ``gradoctor.memory_profile(recipe, ...) -> MemoryProfile``
- ``gradoctor.check_grads(fn_or_module, inputs) -> CaseResult`` (and ``assert_grads_correct``)
"""

__version__ = "0.1.0"

from gradoctor.api import load_report, train, validate  # noqa: E402
from gradoctor.errors import (  # noqa: E402
    GradoctorError,
    OutOfMemory,
    RecipeError,
    RecipeProblem,
    TrainingInterrupted,
    UsageError,
    UserCodeError,
)
from gradoctor.gradcheck import Case, assert_grads_correct, check_grads  # noqa: E402
from gradoctor.memory import memory_profile  # noqa: E402
from gradoctor.recipe import Recipe, load_recipe  # noqa: E402
from gradoctor.training.result import TrainResult  # noqa: E402

__all__ = [
    "Case",
    "GradoctorError",
    "OutOfMemory",
    "Recipe",
    "RecipeError",
    "RecipeProblem",
    "TrainResult",
    "TrainingInterrupted",
    "UsageError",
    "UserCodeError",
    "__version__",
    "assert_grads_correct",
    "check_grads",
    "load_recipe",
    "load_report",
    "memory_profile",
    "train",
    "validate",
]
