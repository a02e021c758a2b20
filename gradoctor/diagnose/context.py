"""What the rules read: the run's history, the replay findings, the recipe and the model's shape.

The history is the typed ``History`` of the run (float lists with real ``nan``/``inf``), not
its JSON form: the rules read attributes, and nothing here parses the strings ``"nan"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradoctor.recipe.schema import Thresholds
from gradoctor.training.history import History

if TYPE_CHECKING:
    import torch

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
_DIGITS = re.compile(r"\d+")


@dataclass
class ModuleInfo:
    """The shape of one module, as the depth rules need it.

    Attributes:
        name (str): qualified name from ``named_modules()`` (``(root)`` for the model).
        type (str): its class name (``Linear``, ``LayerNorm``).
        numel (int): elements of the parameters it owns directly (not its children's).
        weight_ndim (int): ``ndim`` of its ``weight`` parameter (0 if it has none).
    """

    name: str
    type: str
    numel: int
    weight_ndim: int


@dataclass
class RunContext:
    """Everything one rule may read about a finished run.

    Attributes:
        history (History): the run's history, as the report holds it (``History.thinned()``).
        findings (list[dict[str, Any]]): the non-finite guard's findings (``reason``, ``step``,
            ``mode``, ``replay``).
        modules (dict[str, ModuleInfo]): per module name in ``history.modules``.
        precision (str): ``fp32``, ``bf16`` or ``fp16``.
        thresholds (Thresholds): ``diagnostics.thresholds`` of the recipe.
        growth_interval (int): the fp16 scaler's clean steps between growths.
        backoff_factor (float): the fp16 scaler's factor on overflow.
        extra (dict[str, Any]): anything else a caller attaches (unused by the rules).
    """

    history: History
    findings: list[dict[str, Any]]
    modules: dict[str, ModuleInfo]
    precision: str
    thresholds: Thresholds
    growth_interval: int
    backoff_factor: float
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- views the rules share -----------------------------------------------------------
    def steps(self) -> np.ndarray:
        """``int64 [n_steps]``: the logged steps."""
        return np.asarray(self.history.steps, dtype=np.int64)

    def losses(self) -> np.ndarray:
        """``float64 [n_steps]``: the loss at each logged step (NaN/inf kept)."""
        return np.asarray(self.history.loss, dtype=np.float64)

    def grad_norm_totals(self) -> np.ndarray:
        """``float64 [n_steps]``: the total gradient norm at each logged step (NaN/inf kept)."""
        return np.asarray(self.history.grad_norm_total, dtype=np.float64)

    def skipped_mask(self) -> np.ndarray:
        """``bool [n_steps]``: whether each logged step's update was skipped."""
        return _in(self.history.steps, self.history.skipped_steps)

    def module_steps(self) -> np.ndarray:
        """``int64 [n_rows]``: the step of each row of ``module_norms()`` (the log steps; a
        history without ``module_norm_steps`` had one row per logged step)."""
        return np.asarray(self.history.module_norm_steps or self.history.steps, dtype=np.int64)

    def module_skipped(self) -> np.ndarray:
        """``bool [n_rows]``: whether the step of each row of ``module_norms()`` was skipped."""
        return _in(self.module_steps(), self.history.skipped_steps)

    def module_norms(self) -> np.ndarray:
        """``float64 [n_rows, n_modules]``: gradient norms at the log steps (NaN/inf kept)."""
        rows = self.history.module_norms
        if not rows:  # e.g. an OOM before the first flush
            return np.zeros((0, len(self.history.modules)))
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)

    def depth_order(self) -> list[str]:
        """Weight-bearing modules (Linear/Conv-like, not norms or embeddings) from input to
        output: forward execution order when it was sampled, else definition order."""
        names = self.history.modules
        order = [n for n in self.history.forward_order if n in names] or list(names)
        order += [n for n in names if n not in order]
        return [n for n in order if _weight_bearing(self.modules.get(n))]

    def depth_stacks(self) -> list[list[str]]:
        """Same-kind modules at different depths, each stack in ``depth_order()``.

        A kind is a class name plus the qualified name with every run of digits read as an
        index: ``encoder.layer.0.attention.self.query`` and ``encoder.layer.5.attention.self.query``
        (both ``Linear``) are one kind, as are ``layers.0`` ... ``layers.11`` or ``fc1`` ...
        ``fc4``. Only kinds with two or more modules form a stack; a module whose kind occurs
        once (a head, a pooler, a one-layer model's projections) has no depth peer.
        """
        stacks: dict[tuple[str, str], list[str]] = {}
        for name in self.depth_order():
            kind = (self.modules[name].type, _DIGITS.sub("#", name))
            stacks.setdefault(kind, []).append(name)
        return [members for members in stacks.values() if len(members) > 1]


def _in(steps: Any, members: list[int]) -> np.ndarray:
    """``bool [len(steps)]``: whether each of ``steps`` is in ``members``."""
    wanted = set(members)
    return np.asarray([s in wanted for s in steps], dtype=bool)


def _weight_bearing(info: ModuleInfo | None) -> bool:
    return bool(
        info and info.weight_ndim >= 2 and info.type not in NORM_TYPES and info.type != "Embedding"
    )


def module_infos(model: torch.nn.Module, names: list[str]) -> dict[str, ModuleInfo]:
    """The ``ModuleInfo`` of each of ``names`` found in ``model`` (``(root)`` is the model).

    Args:
        model (torch.nn.Module): the trained model.
        names (list[str]): qualified module names, as in ``History.modules``.

    Returns:
        dict[str, ModuleInfo]: per name; names not in the model are left out.
    """
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
    """The length of an edge window: ``fraction`` of ``values``, at least ``minimum``."""
    return max(minimum, int(len(values) * fraction))


def spearman(y: np.ndarray) -> float:
    """Rank correlation of ``y`` with its index (a trend measure robust to outliers)."""
    if len(y) < 4:
        return 0.0
    ranks = np.argsort(np.argsort(y))
    x = np.arange(len(y))
    return float(np.corrcoef(x, ranks)[0, 1])
