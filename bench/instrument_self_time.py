"""Each instrument's own time per step, timed directly around its hooks (CPU).

On a busy 2-core machine the difference of two loops' wall times is noisier than the costs
being measured (±10-25% spread for a 1% cost). On CPU the instruments' device work is
synchronous, so the time spent inside an instrument's hooks *is* its cost: this wraps every
hook of every instrument in ``trainer.instruments`` (and the contexts' enter/exit; the
activation sampler's forward hooks too), the recorder's flush (its own share, without the
instruments' flush hooks), the guard's snapshot, the step start a failed step is undone
to (``rewind mark``), and times a run of ``steps`` steps. The norm
pass, triggered by ``GradNormTracker.after_unscale`` but shared with clipping, is
attributed to ``grad_norms``. Not included: the memory monitor's saved-tensor pack hook
(inside the forward of memory steps only: steps 1, 2 and every 100) and the step machinery
itself (StepView, the instrument loop: a few microseconds per step).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from typing import Any

HOOKS = ("step_start", "after_unscale", "before_update", "after_update", "step_end", "flush")
CONTEXTS = ("forward", "backward", "optimizer")


class _TimedContext:
    """Times a context's ``__enter__`` and ``__exit__`` (not its body)."""

    def __init__(self, cm: Any, add: Any):
        self.cm, self.add = cm, add

    def __enter__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return self.cm.__enter__()
        finally:
            self.add(time.perf_counter() - t0)

    def __exit__(self, *exc: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.cm.__exit__(*exc)
        finally:
            self.add(time.perf_counter() - t0)


def _timed(fn: Any, add: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            add(time.perf_counter() - t0)

    return wrapper


def _timed_context(fn: Any, add: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        cm = fn(*args, **kwargs)
        add(time.perf_counter() - t0)
        return cm if isinstance(cm, contextlib.nullcontext) else _TimedContext(cm, add)

    return wrapper


def instrument(trainer: Any) -> dict[str, float]:
    """Wrap ``trainer``'s instruments, recorder flush and snapshot; returns the live totals
    (seconds by name) the wrapped calls add to."""
    totals: dict[str, float] = defaultdict(float)
    for inst in trainer.instruments:
        add = functools.partial(_add, totals, inst.name)
        for name in HOOKS:
            setattr(inst, name, _timed(getattr(inst, name), add))
        for name in CONTEXTS:
            setattr(inst, name, _timed_context(getattr(inst, name), add))
        sampler = getattr(inst, "sampler", None)
        if sampler is not None:  # the activation sampler's forward hooks run inside forward
            hook = sampler._hook
            sampler._hook = lambda n, hook=hook, add=add: _timed(hook(n), add)
    record = trainer.record
    flush = record.flush

    def record_flush(*args: Any, **kwargs: Any) -> Any:
        before = sum(totals[i.name] for i in trainer.instruments)
        t0 = time.perf_counter()
        try:
            return flush(*args, **kwargs)
        finally:
            inside = sum(totals[i.name] for i in trainer.instruments) - before
            totals["interval flush"] += time.perf_counter() - t0 - inside

    record.flush = record_flush
    trainer.guard.maybe_snapshot = _timed(
        trainer.guard.maybe_snapshot, functools.partial(_add, totals, "snapshot")
    )
    rewind = trainer.stepper.rewind
    if rewind is not None:  # the step start a failed step is undone to (every step)
        rewind.mark = _timed(rewind.mark, functools.partial(_add, totals, "rewind mark"))
    return totals


def _add(totals: dict[str, float], name: str, seconds: float) -> None:
    totals[name] += seconds


__all__ = ["instrument"]
