"""Read a recipe: YAML with line numbers, and ``key.sub=value`` overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gradoctor.errors import RecipeError, RecipeProblem


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.2), not a string."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def key_lines(text: str) -> dict[str, int]:
    """Map each dotted key path in a YAML document to its 1-based line number."""
    return _scan_keys(text)[0]


def duplicate_keys(text: str) -> list[tuple[str, int, int]]:
    """``(dotted key, first line, repeated line)`` for each key given twice in one mapping."""
    return _scan_keys(text)[1]


def _scan_keys(text: str) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
    """One walk of the YAML node tree: key lines (the last one for a repeated key, as YAML
    keeps the last value) and the repeated keys."""
    lines: dict[str, int] = {}
    repeated: list[tuple[str, int, int]] = []
    try:
        root = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError:
        return lines, repeated

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                line = key_node.start_mark.line + 1
                if path in seen:
                    repeated.append((path, seen[path], line))
                seen.setdefault(path, line)
                lines[path] = line
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{prefix}[{i}]")

    walk(root, "")
    return lines, repeated


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Load ``path`` with ``yaml.safe_load``; returns the mapping and its key lines."""
    if path.is_dir():
        raise RecipeError(
            [
                RecipeProblem(
                    "",
                    f"'{path}' is a folder, not a recipe file",
                    hint=f"name the YAML file inside it, e.g. {path / 'recipe.yaml'}",
                )
            ]
        )
    if not path.is_file():
        raise RecipeError(
            [RecipeProblem("", f"recipe file '{path}' does not exist", hint="check the path")]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            [
                RecipeProblem(
                    "",
                    f"recipe file '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                    f"at offset {exc.start})",
                    hint="save the recipe as UTF-8 (YAML files are UTF-8 text)",
                )
            ]
        ) from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(
            [RecipeProblem("", f"not valid YAML: {problem}", line=line)], source=str(path)
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            [RecipeProblem("", f"a recipe is a YAML mapping, got {type(data).__name__}")],
            source=str(path),
        )
    duplicates = duplicate_keys(text)
    if duplicates:
        raise RecipeError(
            [
                RecipeProblem(
                    key,
                    f"given twice (lines {first} and {second}); YAML would silently keep the last",
                    line=second,
                    hint="keep one of them",
                )
                for key, first, second in duplicates
            ],
            source=str(path),
        )
    return data, key_lines(text)


def parse_value(text: str) -> Any:
    """Parse an override value as YAML, with ``1e-3`` read as a number (YAML 1.1 reads a string)."""
    try:
        return safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | dict[str, Any]
) -> tuple[list[RecipeProblem], set[str]]:
    """Apply ``key.sub=value`` strings (or a ``{"key.sub": value}`` mapping) to ``data`` in place.

    Returns the problems and the dotted keys that were set (their lines are not the file's)."""
    problems: list[RecipeProblem] = []
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        for text in overrides:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                problems.append(
                    RecipeProblem(
                        "",
                        f"override '{text}' is not of the form key.sub=value",
                        hint="e.g. train.steps=50 or precision=bf16",
                    )
                )
                continue
            items.append((key.strip(), parse_value(value)))
    for key, value in items:
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    RecipeProblem(
                        ".".join(parts[: i + 1]),
                        f"override '{key}' goes through a {type(child).__name__}, not a mapping",
                    )
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems, {key for key, _ in items}
