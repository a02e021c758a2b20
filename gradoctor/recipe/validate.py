"""Turn a recipe mapping into a :class:`Recipe`, collecting every problem before raising.

Each problem carries the dotted key path, the YAML line (when it came from the file), the
accepted values and, for unknown keys, a "did you mean" from the known ones.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from gradoctor.errors import RecipeError, RecipeProblem
from gradoctor.recipe.components import ResolveError, check_kwargs, resolve_target
from gradoctor.recipe.schema import (
    BACKENDS,
    PRECISIONS,
    STRATEGIES,
    ComponentSpec,
    DiagnosticsConfig,
    DistributedConfig,
    GradScalerConfig,
    OutputConfig,
    Recipe,
    Thresholds,
    TrainConfig,
)

# A check returns None when the value is fine, else the accepted values as text.
Check = Callable[[Any], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Check:
    return lambda v: None if _is_int(v) and v >= lo else f"an integer >= {lo}"


def positive_number(v: Any) -> str | None:
    return None if _is_num(v) and v > 0 else "a number > 0"


def optional_positive(v: Any) -> str | None:
    return None if v is None or (_is_num(v) and v > 0) else "null or a number > 0"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def string_list(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
    return None if ok else "a list of module class names or qualified names, e.g. [Block, layers.3]"


def device(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)
    return None if ok else "auto | cpu | cuda | cuda:N"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else " | ".join(choices)


def growth_factor(v: Any) -> str | None:
    return None if _is_num(v) and v > 1 else "a number > 1"


def backoff_factor(v: Any) -> str | None:
    return None if _is_num(v) and 0 < v < 1 else "a number between 0 and 1 (exclusive)"


SECTION_CHECKS: dict[str, tuple[type, dict[str, Check]]] = {
    "train": (
        TrainConfig,
        {
            "steps": int_at_least(1),
            "accum_steps": int_at_least(1),
            "clip_grad_norm": optional_positive,
            "checkpoint": string_list,
            "seed": int_at_least(0),
            "device": device,
            "deterministic": boolean,
            "checkpoint_every": int_at_least(0),
        },
    ),
    "diagnostics": (
        DiagnosticsConfig,
        {
            "every": int_at_least(1),
            "histogram_every": int_at_least(0),
            "histogram_samples": int_at_least(1),
            "memory_every": int_at_least(0),
            "activation_every": int_at_least(0),
            "snapshot_every": int_at_least(1),
            "sharpness_every": int_at_least(0),
            # YAML reads a bare `off` as false
            "audit": lambda v: None if v in ("first", "off", False) else "first | off",
            "on_nonfinite": one_of("stop", "skip", "continue"),
            "thresholds": lambda v: (
                None if isinstance(v, dict) else "a mapping of threshold names to numbers"
            ),
        },
    ),
    "output": (OutputConfig, {"dir": string, "tensorboard": boolean}),
    "diagnostics.thresholds": (Thresholds, {f.name: positive_number for f in fields(Thresholds)}),
    "distributed": (
        DistributedConfig,
        {"strategy": one_of(*STRATEGIES), "backend": one_of(*BACKENDS)},
    ),
    "grad_scaler": (
        GradScalerConfig,
        {
            "init_scale": positive_number,
            "growth_factor": growth_factor,
            "backoff_factor": backoff_factor,
            "growth_interval": int_at_least(1),
        },
    ),
}
# Components: key -> (required, number of positional args gradoctor passes).
COMPONENTS = {
    "model": (True, 0),
    "data": (True, 0),
    "loss": (False, 0),
    "optimizer": (True, 1),
    "scheduler": (False, 1),
}
TOP_KEYS = [*COMPONENTS, "precision", *(k for k in SECTION_CHECKS if "." not in k)]


def _did_you_mean(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean '{match[0]}'? " if match else ""
    return hint + "known keys: " + ", ".join(known)


class _Collector:
    def __init__(self, lines: dict[str, int], overridden: set[str]):
        self.lines = lines
        self.overridden = overridden
        self.problems: list[RecipeProblem] = []

    def add(self, path: str, message: str, hint: str | None = None) -> None:
        if any(path == o or path.startswith(o + ".") for o in self.overridden):
            self.problems.append(
                RecipeProblem(path, message + " (from a command-line override)", hint=hint)
            )
            return
        line = self.lines.get(path)
        probe = path
        while line is None and "." in probe:  # fall back to the nearest enclosing key
            probe = probe.rsplit(".", 1)[0]
            line = self.lines.get(probe)
        self.problems.append(RecipeProblem(path, message, line=line, hint=hint))


def _component(
    data: dict, key: str, n_pos: int, base_dir: Path, out: _Collector, resolve: bool
) -> ComponentSpec | None:
    block = data.get(key)
    if not isinstance(block, dict) or "_component_" not in block:
        out.add(
            key,
            "must be a mapping with a '_component_' key",
            hint=f"e.g. {key}: {{_component_: models.py:MLP}}",
        )
        return None
    kwargs = {k: v for k, v in block.items() if k != "_component_"}
    spec = ComponentSpec(target=block["_component_"], kwargs=kwargs, key=key)
    if not isinstance(spec.target, str):
        out.add(
            f"{key}._component_",
            "must be a string",
            hint="'file.py:Symbol' or 'dotted.module.Symbol'",
        )
        return None
    if resolve:
        try:
            fn = resolve_target(spec.target, base_dir)
        except ResolveError as exc:
            message = f"cannot resolve '{spec.target}': {exc.message}"
            if exc.user_traceback:
                message += "\n" + exc.user_traceback.rstrip()
            out.add(f"{key}._component_", message, hint=exc.hint)
            return spec
        for arg, message, hint in check_kwargs(fn, kwargs, n_pos):
            out.add(f"{key}.{arg}" if arg else key, message, hint=hint)
    return spec


def _section(data: dict, key: str, out: _Collector) -> Any:
    cls, checks = SECTION_CHECKS[key]
    block = data
    for part in key.split("."):
        block = block.get(part) if isinstance(block, dict) else None
    if block is None:
        return cls()
    if not isinstance(block, dict):
        out.add(key, f"must be a mapping, got {type(block).__name__}")
        return cls()
    known = [f.name for f in fields(cls)]
    values = {}
    for name, value in block.items():
        if name not in checks:
            out.add(f"{key}.{name}", f"unknown key '{name}'", hint=_did_you_mean(str(name), known))
            continue
        accepted = checks[name](value)
        if accepted is not None:
            out.add(f"{key}.{name}", f"invalid value {value!r}", hint=f"accepted: {accepted}")
            continue
        if name == "thresholds":
            value = _section(data, f"{key}.thresholds", out)
        values[name] = (
            float(value)
            if name in ("init_scale", "growth_factor", "backoff_factor", "clip_grad_norm")
            and value is not None
            else value
        )
    return cls(**values)


def _check_distributed(
    dist: DistributedConfig, train: TrainConfig, precision: Any, out: _Collector
) -> None:
    """Combinations the distributed path does not support, each with what to do instead."""
    if dist.backend == "nccl" and train.device == "cpu":
        out.add(
            "distributed.backend",
            "nccl needs CUDA but train.device is cpu",
            hint="use backend: auto (gloo on CPU) or train.device: cuda",
        )
    if dist.strategy == "fsdp" and precision == "fp16":
        out.add(
            "distributed.strategy",
            "fsdp with precision fp16 is not supported (the loss scaler's overflow check would see only this rank's gradient shards)",
            hint="use precision: bf16 with fsdp, or strategy: ddp for fp16",
        )


def _check_output_dir(output: Any, name: str, out: _Collector) -> None:
    """``output.dir`` (relative to the working folder, as a run uses it) must not be, or lie
    under, an existing file. Host-side path checks only; nothing is created."""
    raw = getattr(output, "dir", None)
    if not isinstance(raw, str):
        return
    path = Path(raw.replace("{recipe}", name))
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                out.add(
                    "output.dir",
                    f"'{path}' cannot be created: '{part}' is a file",
                    hint="choose a folder path that can be created (not a file, not under one)",
                )
            return


def build_recipe(
    data: dict[str, Any],
    *,
    lines: dict[str, int] | None = None,
    name: str = "recipe",
    base_dir: Path | None = None,
    source: str | None = None,
    resolve: bool = True,
    extra_problems: list[RecipeProblem] | None = None,
    overridden: set[str] | None = None,
) -> Recipe:
    """Validate ``data`` and build a :class:`Recipe`; raises one RecipeError listing every problem.

    ``resolve`` imports each ``_component_`` and checks its keyword arguments against the
    signature (this imports the user's files; it constructs nothing).
    """
    out = _Collector(lines or {}, overridden or set())
    out.problems.extend(extra_problems or [])
    base_dir = base_dir or Path.cwd()
    data = copy.deepcopy(data)
    for key in data:
        if key not in TOP_KEYS:
            out.add(
                str(key), f"unknown top-level key '{key}'", hint=_did_you_mean(str(key), TOP_KEYS)
            )
    specs = {}
    for key, (required, n_pos) in COMPONENTS.items():
        if data.get(key) is None:
            if required:
                out.add(key, "is required", hint=f"add a '{key}:' block with a '_component_'")
            specs[key] = None
            continue
        specs[key] = _component(data, key, n_pos, base_dir, out, resolve)
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        out.add(
            "precision", f"invalid value {precision!r}", hint="accepted: " + " | ".join(PRECISIONS)
        )
    sections = {key: _section(data, key, out) for key in SECTION_CHECKS if "." not in key}
    if data.get("distributed") is None:
        sections["distributed"] = None  # absent: single process (or ddp when under torchrun)
    else:
        _check_distributed(sections["distributed"], sections["train"], precision, out)
    _check_output_dir(sections.get("output"), name, out)
    if out.problems:
        raise RecipeError(out.problems, source=source)
    recipe = Recipe(
        model=specs["model"],
        data=specs["data"],
        optimizer=specs["optimizer"],
        loss=specs["loss"],
        scheduler=specs["scheduler"],
        precision=precision,
        name=name,
        base_dir=base_dir,
        **sections,
    )
    recipe.raw = recipe.to_dict()
    return recipe
