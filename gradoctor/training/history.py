"""Host-side history of a run: per-step scalars and per-module norms, and their summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become the strings 'nan', 'inf', '-inf'."""
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def decode_float(value: Any) -> float:
    """A number as ``clean`` wrote it (a JSON report), back to a float: ``"nan"``, ``"inf"``
    and ``"-inf"`` are those floats again; ``None`` (never measured) and any other string are
    NaN. The one place that reads the strings ``clean`` writes; a live ``History`` holds real
    floats and needs no decoding.

    Args:
        value (Any): a float, int, one of those strings, or ``None``.

    Returns:
        float: the value (NaN when it has none).
    """
    if isinstance(value, str):
        return _NONFINITE.get(value, math.nan)
    return math.nan if value is None else float(value)


MAX_STEP_POINTS = 50_000
MAX_MODULE_ROWS = 2_000


def _thin(n: int, cap: int) -> list[int]:
    if n <= cap:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, cap).round().astype(int).tolist()))


@dataclass
class History:
    """Everything the report needs, appended once per log interval (host memory only)."""

    modules: list[str]
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    loss_scale: list[float] = field(default_factory=list)
    grad_norm_total: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    overflow: list[dict[str, Any]] = field(
        default_factory=list
    )  # per skipped step: params with non-finite grads
    module_norms: list[list[float]] = field(default_factory=list)  # [log step][module]
    module_norm_steps: list[int] = field(default_factory=list)  # the step of each row above
    module_max: list[float] = field(default_factory=list)  # [module], over every applied step
    module_nonfinite: list[int] = field(default_factory=list)  # [module], steps with NaN/Inf
    update_ratio: dict[str, list[float]] = field(
        default_factory=dict
    )  # module -> ratios at log steps
    update_ratio_steps: list[int] = field(default_factory=list)
    param_norm_total: list[float] = field(default_factory=list)  # ||W|| at update_ratio_steps
    step_time_s: list[float] = field(default_factory=list)  # per interval mean
    samples_per_s: list[float] = field(default_factory=list)
    step_time_steps: list[int] = field(default_factory=list)
    dropped_steps: list[int] = field(default_factory=list)  # on_nonfinite: skip
    activation_steps: list[int] = field(default_factory=list)  # steps ending an activation window
    dead_fraction: dict[str, list[float]] = field(default_factory=dict)  # ReLU site -> per window
    relu_units: dict[str, int] = field(default_factory=dict)
    act_absmax: dict[str, list[float]] = field(default_factory=dict)  # leaf module -> per window
    act_rms: dict[str, list[float]] = field(default_factory=dict)  # leaf module -> per window
    grad_absmax_steps: list[int] = field(default_factory=list)  # sampled steps (fp16 headroom)
    grad_absmax: list[list[float]] = field(default_factory=list)  # [sample][module], unscaled
    grad_absmax_scale: list[float] = field(default_factory=list)  # loss scale at each sample
    forward_order: list[str] = field(default_factory=list)  # leaf modules in execution order
    # one record per sharpness measurement (hessian/sharpness_instrument.py): step, sharpness,
    # batch_sharpness, threshold, lr, preconditioned, hvps
    sharpness: list[dict[str, Any]] = field(default_factory=list)
    # the first step's loss and the loss function's value at chance on the same micro-batch
    # (monitors/initial_loss.py): {"step", "loss", "chance", "rule"}, or {} when not measured
    initial_loss: dict[str, Any] = field(default_factory=dict)
    # the numerics audit of the run's first step (numerics/train_audit.py): its findings,
    # each {"code", "severity", "module", "op", "phase", "step", "message", "evidence", "fix"}
    numerics: list[dict[str, Any]] = field(default_factory=list)

    def truncate(self, last_step: int) -> None:
        """Forget every per-step record after ``last_step`` (a replay re-runs those steps)."""
        keep = sum(1 for s in self.steps if s <= last_step)
        for name in ("steps", "loss", "lr", "loss_scale", "grad_norm_total"):
            setattr(self, name, getattr(self, name)[:keep])
        rows = sum(1 for s in self.module_norm_steps if s <= last_step)
        self.module_norms, self.module_norm_steps = (
            self.module_norms[:rows],
            self.module_norm_steps[:rows],
        )
        kept = np.asarray(self.module_norms, dtype=np.float64).reshape(rows, len(self.modules))
        with np.errstate(
            invalid="ignore"
        ):  # per-step extremes of the dropped steps are gone: rebuild from rows
            self.module_max = (
                np.where(np.isfinite(kept), kept, -np.inf).max(axis=0, initial=-np.inf).tolist()
            )
        self.module_nonfinite = (~np.isfinite(kept)).sum(axis=0).tolist()
        self.skipped_steps = [s for s in self.skipped_steps if s <= last_step]
        self.overflow = [o for o in self.overflow if o["step"] <= last_step]
        n_upd = sum(1 for s in self.update_ratio_steps if s <= last_step)
        self.update_ratio_steps = self.update_ratio_steps[:n_upd]
        self.update_ratio = {k: v[:n_upd] for k, v in self.update_ratio.items()}
        self.param_norm_total = self.param_norm_total[:n_upd]
        n_t = sum(1 for s in self.step_time_steps if s <= last_step)
        self.step_time_s, self.samples_per_s = self.step_time_s[:n_t], self.samples_per_s[:n_t]
        self.step_time_steps = self.step_time_steps[:n_t]
        self.sharpness = [r for r in self.sharpness if r["step"] <= last_step]

    def add_module_norms(self, steps: list[int], rows: np.ndarray, applied: np.ndarray) -> None:
        """One interval of per-module norms ``[n_steps, n_modules]``: keeps the last row, and the
        running max (applied steps) and non-finite counts over every step. Host memory grows
        by one row per log interval, not per step."""
        if not self.module_max:
            self.module_max = [-math.inf] * len(self.modules)
            self.module_nonfinite = [0] * len(self.modules)
        good = np.where(np.isfinite(rows) & applied[:, None], rows, -np.inf)
        self.module_max = np.maximum(self.module_max, good.max(axis=0)).tolist()
        self.module_nonfinite = (
            np.asarray(self.module_nonfinite) + (~np.isfinite(rows)).sum(axis=0)
        ).tolist()
        self.module_norms.append(rows[-1].tolist())
        self.module_norm_steps.append(steps[-1])

    def grad_norm_summary(self) -> dict[str, dict[str, Any]]:
        """Per module: last norm, max over every applied step, median over the log steps."""
        if not self.module_norms:
            return {}
        norms = np.asarray(self.module_norms, dtype=np.float64)
        skipped = set(self.skipped_steps)
        keep = np.asarray([s not in skipped for s in self.module_norm_steps])
        out = {}
        for j, name in enumerate(self.modules):
            col = norms[keep, j] if keep.any() else norms[:, j]
            finite = col[np.isfinite(col)]
            peak = self.module_max[j] if j < len(self.module_max) else -math.inf
            out[name] = {
                "last": float(norms[-1, j]),
                "max": float(peak) if math.isfinite(peak) else float("nan"),
                "median": float(np.median(finite)) if finite.size else float("nan"),
                "nonfinite_steps": int(self.module_nonfinite[j])
                if j < len(self.module_nonfinite)
                else 0,
            }
        return out

    def thinned(self) -> History:
        """A copy holding what ``to_dict()`` holds: long runs thinned evenly (the last point
        kept) to at most ``MAX_STEP_POINTS`` per-step values (``steps``, ``loss``, ``lr``,
        ``loss_scale``, ``grad_norm_total``) and ``MAX_MODULE_ROWS`` per-module rows
        (``module_norms``, ``module_norm_steps``). Values keep their types (non-finite floats
        stay floats); the other fields are shared with this history, not copied.

        Returns:
            History: the thinned view (a new object; this history is unchanged).
        """
        at = _thin(len(self.steps), MAX_STEP_POINTS)
        rows = _thin(len(self.module_norm_steps), MAX_MODULE_ROWS)
        return replace(
            self,
            steps=[self.steps[i] for i in at],
            loss=[self.loss[i] for i in at],
            lr=[self.lr[i] for i in at],
            loss_scale=[self.loss_scale[i] for i in at],
            grad_norm_total=[self.grad_norm_total[i] for i in at],
            module_norms=[self.module_norms[i] for i in rows],
            module_norm_steps=[self.module_norm_steps[i] for i in rows],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, and thinned as ``thinned()`` describes (at most ``MAX_STEP_POINTS``
        per-step values and ``MAX_MODULE_ROWS`` per-module rows)."""
        thin = self.thinned()
        return {
            "step": thin.steps,
            "loss": thin.loss,
            "lr": thin.lr,
            "loss_scale": thin.loss_scale,
            "grad_norm_total": thin.grad_norm_total,
            "module_names": self.modules,
            "module_grad_norms": thin.module_norms,
            "module_norm_steps": thin.module_norm_steps,
            "module_max": self.module_max,
            "module_nonfinite": self.module_nonfinite,
            "update_ratio_steps": self.update_ratio_steps,
            "update_ratio": self.update_ratio,
            "param_norm_total": self.param_norm_total,
            "step_time_s": self.step_time_s,
            "samples_per_s": self.samples_per_s,
            "step_time_steps": self.step_time_steps,
            "skipped_steps": self.skipped_steps,
            "overflow": self.overflow,
            "dropped_steps": self.dropped_steps,
            "activation_steps": self.activation_steps,
            "dead_fraction": self.dead_fraction,
            "relu_units": self.relu_units,
            "act_absmax": self.act_absmax,
            "act_rms": self.act_rms,
            "grad_absmax_steps": self.grad_absmax_steps,
            "grad_absmax": self.grad_absmax,
            "grad_absmax_scale": self.grad_absmax_scale,
            "forward_order": self.forward_order,
            "sharpness": self.sharpness,
            "initial_loss": self.initial_loss,
            "numerics": self.numerics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        h = cls(modules=list(data["module_names"]))
        for key, attr in (
            ("step", "steps"),
            ("loss", "loss"),
            ("lr", "lr"),
            ("loss_scale", "loss_scale"),
            ("grad_norm_total", "grad_norm_total"),
            ("module_grad_norms", "module_norms"),
            ("update_ratio_steps", "update_ratio_steps"),
            ("update_ratio", "update_ratio"),
            ("step_time_s", "step_time_s"),
            ("samples_per_s", "samples_per_s"),
            ("step_time_steps", "step_time_steps"),
            ("skipped_steps", "skipped_steps"),
            ("overflow", "overflow"),
        ):
            setattr(h, attr, data[key])
        for key in (
            "module_norm_steps",
            "module_max",
            "module_nonfinite",
            "dropped_steps",
            "activation_steps",
            "dead_fraction",
            "relu_units",
            "act_absmax",
            "act_rms",
            "grad_absmax_steps",
            "grad_absmax",
            "grad_absmax_scale",
            "forward_order",
            "sharpness",
            "initial_loss",
            "numerics",
            "param_norm_total",
        ):
            if key in data:
                setattr(h, key, data[key])
        return h
