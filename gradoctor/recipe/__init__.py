"""Recipes: load a YAML file, apply overrides, validate everything at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, TypeVar

from gradoctor.errors import UsageError
from gradoctor.recipe.load import apply_overrides, read_yaml
from gradoctor.recipe.schema import (
    ComponentSpec,
    DiagnosticsConfig,
    GradScalerConfig,
    OutputConfig,
    Recipe,
    TrainConfig,
)
from gradoctor.recipe.validate import build_recipe

__all__ = [
    "command_options",
    "ComponentSpec",
    "DiagnosticsConfig",
    "GradScalerConfig",
    "OutputConfig",
    "Recipe",
    "TrainConfig",
    "load_command_recipe",
    "load_recipe",
]


T = TypeVar("T")


def _nested_to_dotted(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 5}, "train__seed": 1}`` -> ``{"train.steps": 5, "train.seed": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        key = prefix + key.replace("__", ".")
        if isinstance(value, dict) and "_component_" not in value:
            flat.update(_nested_to_dotted(value, key + "."))
        else:
            flat[key] = value
    return flat


def _as_yaml(value: Any) -> str:
    """An override value as command-line text YAML reads back (JSON is YAML); a value JSON
    cannot hold (a tensor, inf) as its repr: provenance only, never an error."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def load_recipe(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    resolve: bool = True,
) -> Recipe:
    """Load and validate a recipe.

    ``recipe`` is a YAML path, an already-parsed mapping (paths then start at the working
    directory), or a :class:`Recipe` (returned as is when there are no overrides).
    ``overrides`` are CLI strings ``["train.steps=50"]`` or a mapping (nested, dotted, or with
    ``__`` for dots). Raises :class:`~gradoctor.errors.RecipeError` listing every problem.
    """
    earlier: list[str] = []
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        data, lines, source = copy.deepcopy(recipe.raw), {}, recipe.source
        base_dir, name, earlier = recipe.base_dir, recipe.name, list(recipe.overrides)
    elif isinstance(recipe, dict):
        data, lines, source = copy.deepcopy(recipe), {}, None
        base_dir, name = Path.cwd(), "recipe"
    else:
        path = Path(recipe)
        data, lines = read_yaml(path)
        base_dir, name, source = path.resolve().parent, path.stem, str(path)
    if isinstance(overrides, dict):
        overrides = _nested_to_dotted(overrides)
    problems, overridden = apply_overrides(data, overrides or [])
    loaded = build_recipe(
        data,
        lines=lines,
        name=name,
        base_dir=base_dir,
        source=source,
        resolve=resolve,
        extra_problems=problems,
        overridden=overridden,
    )
    loaded.source = source
    as_text = (
        [f"{k}={_as_yaml(v)}" for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else list(overrides or [])
    )
    loaded.overrides = earlier + as_text
    return loaded


def command_options(cls: type[T], options: dict[str, Any], command: str) -> T:
    """A command's options dataclass from its API's keyword arguments: an unknown or missing
    one is a UsageError naming the command (``curvature(): ... unexpected keyword ...``)."""
    try:
        return cls(**options)
    except TypeError as exc:
        raise UsageError(f"{command}(): {exc}") from None


def load_command_recipe(
    recipe: str | Path | dict[str, Any] | Recipe | None,
    overrides: list[str] | dict[str, Any] | None,
    command: str,
) -> Recipe:
    """The recipe of a command whose RECIPE argument defaults to ``./recipe.yaml``
    (``memory-profile``, ``curvature``, ...). UsageError when there is none, or when the path
    is not a file; RecipeError for a bad recipe."""
    if recipe is None:
        recipe = Path("recipe.yaml")
        if not recipe.is_file():
            raise UsageError(
                "no recipe given and no ./recipe.yaml here",
                hint=f"pass one: gradoctor {command} recipes/mlp.yaml",
            )
    elif isinstance(recipe, (str, Path)) and not Path(recipe).is_file():
        raise UsageError(f"recipe file '{recipe}' does not exist", hint="check the path")
    return load_recipe(recipe, overrides or None)
