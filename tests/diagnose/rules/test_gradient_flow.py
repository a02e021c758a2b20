"""``exploding_gradients`` and ``vanishing_gradients`` (gradoctor/diagnose/rules/gradient_flow.py)."""

import math

from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import codes, ctx


def test_exploding_over_time_and_with_depth():
    growing = [[10 ** (i / 25)] * 3 for i in range(100)]  # 1 -> ~1e4
    d = diagnose(ctx(norms=growing))
    assert [x["code"] for x in d] == ["exploding_gradients"] and d[0]["evidence"]["growth"] > 100
    deep = [[1e4, 10.0, 1.0]] * 100  # the input side gets 1e4x the output side
    (e,) = diagnose(ctx(norms=deep))
    assert e["code"] == "exploding_gradients" and e["modules"][0] == "l0"


def test_vanishing_needs_to_be_sustained():
    vanished = [[1e-6, 1e-2, 1.0]] * 100
    (v,) = diagnose(ctx(norms=vanished))
    assert v["code"] == "vanishing_gradients" and v["modules"][0] == "l0"
    transient = [[1e-6, 1e-2, 1.0]] * 10 + [[1.0, 1.0, 1.0]] * 90  # only at the start
    assert codes(ctx(norms=transient)) == []


def test_nonfinite_norms_are_real_floats_and_skipped_steps_are_left_out():
    """A NaN/inf norm on a skipped (fp16 overflow) step is the scaler's business, not growth."""
    norms = [[1.0, 1.0, 1.0]] * 100
    norms[40] = [math.inf, math.nan, 1.0]
    assert codes(ctx(norms=norms, skipped=[41])) == []
