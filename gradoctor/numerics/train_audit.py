"""The numerics audit inside ``gradoctor train``: ``diagnostics.audit: first`` (the default)
runs the run's first step (the first this process trains, after a resume too) with
``gradoctor audit``'s pattern detector attached, graded in the recipe's precision, and
writes its findings to ``history.numerics`` at the first flush; the rule
``diagnose/rules/numerics.py`` turns those at ``warning``/``error`` into diagnoses.

Cost: that one step with the detector (its dispatch mode and a few reductions per pattern
op; one host sync, at the step's end), once per run; the precision comparison of
``gradoctor audit`` is not run here. Off under FSDP (sharded parameters) and with
``diagnostics.audit: off``.
"""

from __future__ import annotations

from typing import Any

from gradoctor.monitors.instrument import Instrument
from gradoctor.numerics.patterns import PatternDetector
from gradoctor.numerics.precision import DTYPES
from gradoctor.recipe.schema import Recipe
from gradoctor.training.state import TrainState


class FirstStepAudit(PatternDetector):
    """The pattern detector on the first step it is offered; its findings go to the
    history at the next flush."""

    name = "numerics audit"

    def __init__(self, state: TrainState, recipe: Recipe):
        target = DTYPES.get(recipe.precision)
        super().__init__(state.model, target=target)
        self._first: int | None = None
        self._written = False

    def active(self, step: int) -> bool:
        if self._first is None:
            self._first = step
        return step == self._first

    def flush(self, interval: Any) -> None:
        if self._written or self._first is None:
            return
        interval.history.numerics = [f.to_dict() for f in self.findings.values()]
        self._written = True


def audit_instruments(
    recipe: Recipe, state: TrainState, tb: Any, distributed: bool
) -> list[Instrument]:
    """What ``gradoctor.api`` adds to a run for ``diagnostics.audit`` (module docstring)."""
    if recipe.diagnostics.audit in ("off", False) or state.fsdp:
        return []
    return [FirstStepAudit(state, recipe)]


__all__ = ["FirstStepAudit", "audit_instruments"]
