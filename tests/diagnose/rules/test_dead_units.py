"""``dead_units`` (gradoctor/diagnose/rules/dead_units.py)."""

from gradoctor.diagnose.engine import diagnose
from gradoctor.recipe.schema import Thresholds
from tests.diagnose.rules.synthetic import codes, ctx


def test_dead_units_and_threshold():
    dead = {"relu": [0.95, 0.97], "relu2": [0.1, 0.1]}
    (d,) = diagnose(ctx(dead=dead))
    assert d["code"] == "dead_units" and d["modules"] == ["relu"] and d["severity"] == "error"
    assert d["steps"] == [50, 100] and d["evidence"]["relu"] == {"dead_fraction": 0.97, "units": 64}
    assert codes(ctx(dead=dead, thresholds=Thresholds(dead_fraction=0.99))) == []
