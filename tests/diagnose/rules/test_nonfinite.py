"""``nonfinite_loss`` and ``nonfinite_origin`` (gradoctor/diagnose/rules/nonfinite.py)."""

import math

from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import ctx


def test_nonfinite_loss_first_step():
    loss = [1.0] * 40 + [math.nan] * 60
    (d,) = diagnose(ctx(loss=loss))
    assert d["code"] == "nonfinite_loss" and d["steps"] == [41]
    assert d["evidence"]["last_finite_step"] == 40 and d["message"].startswith(
        "the loss became NaN"
    )


def test_an_infinite_loss_is_non_finite_not_nan():
    loss = [1.0] * 40 + [math.inf] * 60
    (d,) = diagnose(ctx(loss=loss))
    assert d["message"] == "the loss became non-finite at step 41"


def test_replay_origin_names_the_module_and_the_fix_of_its_op():
    replay = {"phase": "forward", "module": "l1", "op": "log", "kind": "nan"}
    finding = {"reason": "loss", "step": 41, "mode": "stop", "replay": replay}
    loss = [1.0] * 40 + [math.nan] * 60
    d = {x["code"]: x for x in diagnose(ctx(loss=loss, findings=[finding]))}
    assert d["nonfinite_loss"]["modules"] == ["l1"]
    origin = d["nonfinite_origin"]
    assert origin["modules"] == ["l1"] and origin["steps"] == [41]
    assert "clamp the input of log" in origin["fix"]
