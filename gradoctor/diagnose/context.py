"""What the rules read: the run's history, the replay findings, the recipe and the model's shape."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradoctor.recipe.schema import Thresholds

NORM_TYPES = (
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "RMSNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
)
FP16_MAX = 65504.0


@dataclass
class ModuleInfo:
    name: str
    type: str
    numel: int  # parameters it owns directly
    weight_ndim: int  # ndim of its "weight" parameter (0 if none)


@dataclass
class RunContext:
    history: dict[str, Any]  # History.to_dict()
    findings: list[dict[str, Any]]  # NonFiniteGuard.findings
    modules: dict[str, ModuleInfo]
    precision: str
    thresholds: Thresholds
    growth_interval: int
    backoff_factor: float
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- views the rules share -----------------------------------------------------------
    def steps(self) -> np.ndarray:
        return np.asarray(self.history["step"], dtype=np.int64)

    def losses(self) -> np.ndarray:
        return np.asarray([_f(v) for v in self.history["loss"]], dtype=np.float64)

    def skipped_mask(self) -> np.ndarray:
        skipped = set(self.history["skipped_steps"])
        return np.asarray([s in skipped for s in self.history["step"]], dtype=bool)

    def module_steps(self) -> np.ndarray:
        """The step of each row of ``module_norms()`` (log steps)."""
        return np.asarray(
            self.history.get("module_norm_steps") or self.history["step"], dtype=np.int64
        )

    def module_skipped(self) -> np.ndarray:
        skipped = set(self.history["skipped_steps"])
        return np.asarray([s in skipped for s in self.module_steps()], dtype=bool)

    def module_norms(self) -> np.ndarray:
        """``[n_rows, n_modules]`` gradient norms at the log steps (non-finite kept as inf/nan)."""
        rows = self.history["module_grad_norms"]
        return np.asarray([[_f(v) for v in row] for row in rows], dtype=np.float64).reshape(
            len(rows), -1
        )

    def depth_order(self) -> list[str]:
        """Weight-bearing modules (Linear/Conv-like, not norms or embeddings) from input to output:
        forward execution order when it was sampled, else definition order."""
        names = self.history["module_names"]
        order = [n for n in self.history.get("forward_order", []) if n in names] or list(names)
        order += [n for n in names if n not in order]
        keep = []
        for n in order:
            info = self.modules.get(n)
            if (
                info
                and info.weight_ndim >= 2
                and info.type not in NORM_TYPES
                and info.type != "Embedding"
            ):
                keep.append(n)
        return keep


def _f(v: Any) -> float:
    if isinstance(v, str):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[v]
    return float(v) if v is not None else math.nan


def module_infos(model: Any, names: list[str]) -> dict[str, ModuleInfo]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        module = modules.get("" if name == "(root)" else name)
        if module is None:
            continue
        params = dict(module.named_parameters(recurse=False))
        weight = params.get("weight")
        out[name] = ModuleInfo(
            name=name,
            type=type(module).__name__,
            numel=sum(p.numel() for p in params.values()),
            weight_ndim=weight.dim() if weight is not None else 0,
        )
    return out


def window(values: np.ndarray, fraction: float = 0.1, minimum: int = 3) -> int:
    return max(minimum, int(len(values) * fraction))


def spearman(y: np.ndarray) -> float:
    """Rank correlation of ``y`` with its index (a trend measure robust to outliers)."""
    if len(y) < 4:
        return 0.0
    ranks = np.argsort(np.argsort(y))
    x = np.arange(len(y))
    return float(np.corrcoef(x, ranks)[0, 1])
