"""Synthetic runs for the rule tests: a real ``History`` (the typed object the loop fills) and
the ``RunContext`` around it, so a renamed field fails here as it would in the loop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gradoctor.diagnose.context import ModuleInfo, RunContext
from gradoctor.diagnose.engine import diagnose
from gradoctor.recipe.schema import Thresholds
from gradoctor.training.history import History

MODULES = ["l0", "l1", "l2"]  # input side -> output side, all Linear


def history(
    n: int = 100,
    loss: Sequence[float] | None = None,
    norms: Sequence[Sequence[float]] | None = None,
    skipped: Iterable[int] = (),
    scales: Sequence[float] | None = None,
    overflow: Iterable[dict[str, Any]] = (),
    update: dict[str, list[float]] | None = None,
    dead: dict[str, list[float]] | None = None,
    absmax: dict[str, list[float]] | None = None,
) -> History:
    """A run of ``n`` logged steps (1..n) over ``MODULES``, one module-norm row per step.

    Args:
        n (int): logged steps.
        loss (Sequence[float] | None): per step; default a clean decrease 2.0 -> 0.5.
        norms (Sequence[Sequence[float]] | None): ``[n][3]`` gradient norms; default all 1.0.
        skipped (Iterable[int]): steps whose update was skipped (fp16 overflow).
        scales (Sequence[float] | None): loss scale per step; default 65536.
        overflow (Iterable[dict[str, Any]]): per skipped step: ``step``, ``params``.
        update (dict[str, list[float]] | None): ``||dW||/||W||`` per module, every 10th step;
            default 1e-3 everywhere.
        dead (dict[str, list[float]] | None): ReLU site -> dead fraction per window (64 units).
        absmax (dict[str, list[float]] | None): leaf module -> max |activation| per window.

    Returns:
        History: filled as the training loop fills it (real floats, NaN kept as NaN).
    """
    steps = list(range(1, n + 1))
    loss = list(loss) if loss is not None else np.linspace(2.0, 0.5, n).tolist()
    norms = [list(r) for r in norms] if norms is not None else [[1.0, 1.0, 1.0]] * n
    h = History(modules=list(MODULES))
    h.steps, h.loss, h.lr = steps, [float(v) for v in loss], [1e-3] * n
    h.loss_scale = list(scales) if scales is not None else [65536.0] * n
    h.grad_norm_total = [float(np.sqrt(np.sum(np.square(r)))) for r in norms]
    h.module_norms, h.module_norm_steps = norms, list(steps)
    h.skipped_steps, h.overflow = list(skipped), list(overflow)
    h.update_ratio = update if update is not None else {m: [1e-3] * 10 for m in MODULES}
    h.update_ratio_steps = steps[9::10]
    h.dead_fraction = dict(dead or {})
    h.relu_units = {site: 64 for site in h.dead_fraction}
    h.act_absmax = dict(absmax or {})
    h.activation_steps = [50, 100]
    h.forward_order = list(MODULES)
    return h


def context(
    h: History,
    precision: str = "fp32",
    thresholds: Thresholds | None = None,
    growth_interval: int = 2000,
    findings: Iterable[dict[str, Any]] = (),
) -> RunContext:
    """The ``RunContext`` of ``h``: every module a ``Linear`` with 100 weights."""
    infos = {m: ModuleInfo(m, "Linear", 100, 2) for m in MODULES}
    return RunContext(
        history=h,
        findings=list(findings),
        modules=infos,
        precision=precision,
        thresholds=thresholds or Thresholds(),
        growth_interval=growth_interval,
        backoff_factor=0.5,
    )


def ctx(
    precision: str = "fp32",
    thresholds: Thresholds | None = None,
    growth_interval: int = 2000,
    findings: Iterable[dict[str, Any]] = (),
    **history_args: Any,
) -> RunContext:
    """``context(history(**history_args), ...)`` in one call."""
    return context(history(**history_args), precision, thresholds, growth_interval, findings)


def codes(c: RunContext) -> list[str]:
    """The codes every rule finds in ``c``, most severe first."""
    return [d["code"] for d in diagnose(c)]
