"""``fp16_headroom`` (gradoctor/diagnose/rules/headroom.py)."""

from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import context, ctx, history


def test_headroom_warning_in_fp16_info_otherwise():
    absmax = {"l1": [30000.0], "l0": [10.0]}
    (w,) = diagnose(ctx(precision="fp16", absmax=absmax))
    assert w["code"] == "fp16_headroom" and w["severity"] == "warning" and w["modules"] == ["l1"]
    (i,) = diagnose(ctx(precision="bf16", absmax=absmax))
    assert i["severity"] == "info"


def test_unscaled_gradients_near_the_limit():
    h = history()
    h.grad_absmax = [[10.0, 20000.0, 1.0], [10.0, 9000.0, 1.0]]  # [sample][module]
    (w,) = diagnose(context(h, precision="fp16"))
    assert w["modules"] == ["l1"] and w["evidence"]["gradients_absmax_unscaled"] == {"l1": 20000.0}
