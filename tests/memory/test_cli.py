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


def test_overrides_alone_profile_the_default_recipe(tmp_path, monkeypatch):
    """``./recipe.yaml`` with overrides only, one of them a path (it holds '/')."""
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "new" / "dir" / "p.json"
    args = ["memory-profile", f"output.dir={tmp_path}/runs/x", "data.batch_size=8"]
    result = runner.invoke(app, [*args, "--no-check", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["batch_size"] == 8


def test_json_path_problems_are_usage_errors_before_anything_runs(tmp_path):
    path = _write(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for target, words in ((tmp_path, "is a directory"), (blocker / "x.json", "cannot create")):
        result = runner.invoke(app, ["memory-profile", str(path), "--json", str(target)])
        assert result.exit_code == 2, result.output
        assert words in result.output and "peak" not in result.output  # nothing ran
