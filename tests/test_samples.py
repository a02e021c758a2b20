"""Every shipped recipe validates, names its command on line 1, and trains a few steps."""

from pathlib import Path

import pytest

import gradoctor

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"mlp", "cnn", "tiny_lm"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_documents_its_command(path):
    assert path.read_text().splitlines()[0] == f"# gradoctor train recipes/{path.name}"
    gradoctor.validate(path)


@pytest.mark.parametrize(
    "path", [p for p in RECIPES if p.stem in ("mlp", "cnn", "tiny_lm")], ids=lambda p: p.stem
)
def test_sample_recipe_loss_drops(path, tmp_path):
    result = gradoctor.train(
        path, output={"dir": str(tmp_path)}, train={"steps": 40}, diagnostics={"every": 10}
    )
    losses = result.history["loss"]
    assert result.status == "completed" and result.steps_completed == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
