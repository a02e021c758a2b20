"""``frequent_overflow`` and ``loss_scale_collapse`` (gradoctor/diagnose/rules/loss_scale.py)."""

from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import codes, ctx


def test_fp16_normal_rhythm_is_silent_but_frequent_overflow_is_not():
    # calibration (3 skips at the start) + one growth probe per growth_interval: normal
    skipped = [1, 2, 3, 53, 103, 153]
    assert codes(ctx(n=200, precision="fp16", skipped=skipped, growth_interval=50)) == []
    many = [1, 2, 3] + list(range(20, 200, 9))
    overflow = [{"step": s, "params": ["l1.weight"], "scale_after": 1024.0} for s in many]
    d = diagnose(ctx(n=200, precision="fp16", skipped=many, overflow=overflow))
    assert d[0]["code"] == "frequent_overflow" and d[0]["modules"] == ["l1"]


def test_loss_scale_collapse():
    scales = [65536.0 / 2**i for i in range(40)] + [1e-12] * 60
    d = diagnose(ctx(precision="fp16", skipped=range(1, 101), scales=scales))
    assert "loss_scale_collapse" in [x["code"] for x in d] and d[0]["severity"] == "error"
    (collapse,) = [x for x in d if x["code"] == "loss_scale_collapse"]
    assert collapse["evidence"]["min_scale"] == 1e-12


def test_not_fp16_is_never_a_loss_scale_problem():
    assert codes(ctx(precision="bf16", skipped=range(1, 101))) == []
