"""gradoctor: a doctor for PyTorch training.

Python API (the CLI calls these):

- ``gradoctor.train(recipe, **overrides) -> TrainResult``
- ``gradoctor.validate(recipe) -> Recipe``
- ``gradoctor.load_recipe(recipe, overrides) -> Recipe``
- ``gradoctor.load_report(run_dir) -> TrainResult``
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
from gradoctor.recipe import Recipe, load_recipe  # noqa: E402
from gradoctor.result import TrainResult  # noqa: E402

__all__ = [
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
    "load_recipe",
    "load_report",
    "train",
    "validate",
]
