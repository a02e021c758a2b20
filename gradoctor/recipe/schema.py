"""Typed configuration of a recipe. Defaults here are the documented defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ComponentSpec:
    """A ``_component_`` block: ``target`` to resolve, ``kwargs`` from its sibling keys."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # key path in the recipe, e.g. "model", for error messages


@dataclass
class GradScalerConfig:
    """fp16 dynamic loss scaling (``torch.amp.GradScaler``); PyTorch's defaults."""

    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000  # consecutive finite steps before the scale grows


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps (the run's length)
    accum_steps: int = 1  # micro-batches per optimizer step; the loss is divided by this
    clip_grad_norm: float | None = None  # max total L2 norm of the unscaled gradients
    checkpoint: list[str] = field(default_factory=list)  # module class or qualified names
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch.use_deterministic_algorithms for the run
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps (0: only at the end)


@dataclass
class DiagnosticsConfig:
    every: int = 10  # log interval in optimizer steps: one host<->device sync per interval
    histogram_every: int = 100  # gradient histograms per module (0: off); sparser than `every`
    histogram_samples: int = (
        4096  # elements sampled per module for a histogram (uniform, with replacement)
    )
    memory_every: int = 100  # memory measured on steps 1, 2 and every N steps (0: only 1 and 2)


@dataclass
class OutputConfig:
    dir: str = "runs/{recipe}"  # {recipe} is the recipe file's stem; relative to the working dir
    tensorboard: bool = True


@dataclass
class Recipe:
    """A validated recipe. ``raw`` is the resolved mapping saved as ``recipe.yaml``."""

    model: ComponentSpec
    data: ComponentSpec
    optimizer: ComponentSpec
    loss: ComponentSpec | None = None
    scheduler: ComponentSpec | None = None
    precision: str = "fp32"
    grad_scaler: GradScalerConfig = field(default_factory=GradScalerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    name: str = "recipe"  # file stem, used for {recipe} in output.dir
    base_dir: Path = field(default_factory=Path.cwd)  # where 'file.py:Symbol' paths start
    raw: dict[str, Any] = field(default_factory=dict)

    def output_dir(self) -> Path:
        return Path(self.output.dir.replace("{recipe}", self.name))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe with every default filled in (JSON/YAML-safe)."""
        out: dict[str, Any] = {}
        for key in ("model", "data", "loss", "optimizer", "scheduler"):
            spec = getattr(self, key)
            if spec is not None:
                out[key] = {"_component_": spec.target, **spec.kwargs}
        out["precision"] = self.precision
        if self.precision == "fp16":
            out["grad_scaler"] = asdict(self.grad_scaler)
        for key in ("train", "diagnostics", "output"):
            out[key] = asdict(getattr(self, key))
        return out
