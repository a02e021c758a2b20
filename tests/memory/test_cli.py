import json

import yaml
from typer.testing import CliRunner

from gradoctor.cli import app
from tests.memory.conftest import memory_recipe

runner = CliRunner()


def _write(tmp_path, **changes):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(memory_recipe("Stack", **changes)))
    return path


def test_memory_profile_prints_and_writes_json(tmp_path):
    path = _write(tmp_path)
    out = tmp_path / "out" / "profile.json"
    result = runner.invoke(
        app,
        [
            "memory-profile",
            str(path),
            "--batch-sizes",
            "8,16",
            "--budget",
            "20KiB",
            "--json",
            str(out),
        ],
        env={"COLUMNS": "140"},
    )
    assert result.exit_code == 0, result.output
    for text in ("Where the peak goes", "What if", "checkpoint plan for 20 KiB", "checkpoint: ["):
        assert text in result.output
    data = json.loads(out.read_text())
    assert data["plan"]["budget"] == 20 * 1024
    assert {c["status"] for c in data["checks"]} == {"ok"}


def test_default_recipe_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["memory-profile", "--no-check"])
    assert result.exit_code == 2
    assert "recipe.yaml" in result.output
    _write(tmp_path)
    result = runner.invoke(app, ["memory-profile", "--no-check", "--batch-sizes", "16"])
    assert result.exit_code == 0, result.output


def test_bad_budget_unit_exits_2_naming_the_units(tmp_path):
    result = runner.invoke(app, ["memory-profile", str(_write(tmp_path)), "--budget", "10XB"])
    assert result.exit_code == 2
    assert "unknown unit" in result.output and "GiB" in result.output and "MB" in result.output


def test_bad_steps_exit_2(tmp_path):
    result = runner.invoke(app, ["memory-profile", str(_write(tmp_path)), "--steps", "0"])
    assert result.exit_code == 2
