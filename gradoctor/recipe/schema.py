"""Typed configuration of a recipe. Defaults here are the documented defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")


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
class Thresholds:
    """When a diagnosis fires. Defaults keep healthy runs (the shipped samples, a standard
    ResNet/transformer) silent; each is documented in the README's triage table."""

    explode_growth: float = 100.0  # total grad norm: late median / early median
    explode_grad_to_param: float = 100.0  # total grad norm / total parameter norm, first log step
    explode_depth_ratio: float = 1.0e3  # input-side / output-side grad RMS, sustained
    vanish_depth_ratio: float = 1.0e-3  # input-side / output-side grad RMS, sustained
    vanish_floor: float = 1.0e-10  # a module's grad RMS below this (with others above) is vanished
    sustained_fraction: float = (
        0.5  # share of logged steps (second half of the run) a ratio must hold
    )
    dead_fraction: float = 0.5  # share of a ReLU's units that output 0 for every sampled input
    overflow_tolerance: int = 3  # fp16 skips allowed beyond calibration + growth probes
    collapse_scale: float = 1.0  # a loss scale at or below this has collapsed
    collapse_skips: int = 5  # consecutive skipped steps after calibration = collapse
    update_ratio_high: float = 0.1  # median ||dW|| / ||W|| per module
    update_ratio_low: float = 1.0e-7
    divergence_factor: float = 1.5  # late loss vs initial loss
    headroom_factor: float = 8.0  # |value| within this factor of fp16's max (65504)
    initial_loss_factor: float = 4.0  # step 1's loss vs the loss at chance (ln C, Var(y), ...)
    activation_growth: float = 1.5  # per-layer growth of the output RMS along the forward...
    activation_growth_total: float = 100.0  # ...sustained to this total over the run of layers


@dataclass
class DiagnosticsConfig:
    every: int = 10  # log interval in optimizer steps: one host<->device sync per interval
    histogram_every: int = 100  # gradient histograms per module (0: off); sparser than `every`
    histogram_samples: int = 4096  # elements sampled per module for a histogram
    memory_every: int = 100  # memory measured on steps 1, 2 and every N steps (0: only 1 and 2)
    activation_every: int = 50  # dead-unit / headroom hooks on steps 1 and every N (0: off)
    snapshot_every: int = 50  # replay snapshot interval, rounded up to a multiple of `every`
    # Sharpness (top Hessian eigenvalue, batch sharpness) on the step's batch every N steps
    # (0: off). One measurement costs ~37 gradient steps (11 HVPs at ~3.3 gradients each, and
    # two forwards), so 2000 keeps it near 2% of a run (bench/hvp_cost.py, README).
    sharpness_every: int = 2000
    # numerics audit (gradoctor audit's pattern detector) on the run's first step: first | off.
    # Its findings at warning/error join the diagnoses; it costs about one more step, once.
    audit: str = "first"
    on_nonfinite: str = "stop"  # stop | skip | continue, after the replay of the first bad step
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class OutputConfig:
    dir: str = "runs/{recipe}"  # {recipe} is the recipe file's stem; relative to the working dir
    tensorboard: bool = True


@dataclass
class DistributedConfig:
    """Multi-process training under torchrun (see the README section "Distributed training")."""

    strategy: str = "ddp"  # ddp (DistributedDataParallel) | fsdp (fully_shard, FSDP2)
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU | nccl | gloo


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
    distributed: DistributedConfig | None = None  # None: single process unless under torchrun
    name: str = "recipe"  # file stem, used for {recipe} in output.dir
    base_dir: Path = field(default_factory=Path.cwd)  # where 'file.py:Symbol' paths start
    # provenance, not configuration (not compared, not in to_dict): the YAML path as given
    # (None: built from a mapping) and the key.sub=value overrides applied, in order
    source: str | None = field(default=None, compare=False)
    overrides: list[str] = field(default_factory=list, compare=False)
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
        if self.distributed is not None:
            out["distributed"] = asdict(self.distributed)
        return out
