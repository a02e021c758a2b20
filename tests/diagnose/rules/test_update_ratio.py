"""``update_ratio_high`` / ``update_ratio_low`` (gradoctor/diagnose/rules/update_ratio.py)."""

import math

from gradoctor.diagnose.engine import diagnose
from gradoctor.recipe.schema import Thresholds
from tests.diagnose.rules.synthetic import codes, ctx


def test_update_ratio_bands_and_configurable_thresholds():
    update = {"l0": [0.5] * 10, "l1": [1e-3] * 10, "l2": [1e-9] * 10}
    d = {x["code"]: x for x in diagnose(ctx(update=update))}
    assert d["update_ratio_high"]["modules"] == ["l0"]
    assert d["update_ratio_low"]["modules"] == ["l2"]
    loose = Thresholds(update_ratio_high=1.0, update_ratio_low=1e-12)
    assert codes(ctx(update=update, thresholds=loose)) == []


def test_skipped_and_non_finite_updates_are_left_out():
    """0 (a skipped step's update) and NaN do not pull the median down."""
    update = {"l0": [0.0] * 8 + [1e-3, 1e-3], "l1": [math.nan] * 9 + [1e-3], "l2": [1e-3] * 10}
    assert codes(ctx(update=update)) == []
