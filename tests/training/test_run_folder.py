"""A fresh run never silently replaces or mixes with a previous run's outputs: refused
(exit 2) unless --overwrite, which replaces them; --resume continues them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app
from gradoctor.errors import UsageError
from gradoctor.launch import launch
from tests.conftest import base_recipe


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_touches_nothing(tmp_path):
    recipe = base_recipe(tmp_path / "run")
    gradoctor.train(recipe)
    before = _snapshot(tmp_path / "run")
    with pytest.raises(UsageError) as err:
        gradoctor.train(base_recipe(tmp_path / "run", **{"train.steps": 3}))
    text = str(err.value)
    assert "already holds a completed run of 10 step(s)" in text
    assert "--resume" in text and "--overwrite" in text and "output.dir=" in text
    assert err.value.exit_code == 2
    assert _snapshot(tmp_path / "run") == before  # report, checkpoint, events, recipe: intact


def test_overwrite_replaces_every_output_of_the_previous_run(tmp_path):
    gradoctor.train(base_recipe(tmp_path / "run"))
    result = gradoctor.train(base_recipe(tmp_path / "run", **{"train.steps": 3}), overwrite=True)
    assert result.steps_completed == 3
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps_completed"] == 3
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["train"]["steps"] == 3


def test_an_interrupted_runs_folder_with_only_a_checkpoint_is_refused_too(tmp_path):
    run = gradoctor.train(base_recipe(tmp_path / "run"))
    for p in Path(run.output_dir).iterdir():
        if p.name != "checkpoint.pt":
            p.unlink()
    with pytest.raises(UsageError, match=r"checkpoint\.pt"):
        gradoctor.train(base_recipe(tmp_path / "run"))
    resumed = gradoctor.train(
        base_recipe(tmp_path / "run", **{"train.steps": 12}), resume=run.output_dir
    )
    assert resumed.start_step == 10


def test_an_existing_empty_folder_or_unrelated_files_are_fine(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    gradoctor.train(base_recipe(tmp_path / "run", **{"train.steps": 2}))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_cli_second_run_exits_2_and_overwrite_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base_recipe(tmp_path / "run", **{"train.steps": 2})))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(path), "-q"]).exit_code == 0
    again = runner.invoke(app, ["train", str(path), "-q"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["train", str(path), "-q", "--overwrite"]).exit_code == 0


def test_a_multi_process_launch_is_refused_before_torchrun_starts(tmp_path, monkeypatch):
    gradoctor.train(base_recipe(tmp_path / "run", **{"train.steps": 2}))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base_recipe(tmp_path / "run", **{"train.steps": 2})))

    def no_torchrun(*args, **kwargs):
        raise AssertionError("torchrun must not start")

    monkeypatch.setattr("gradoctor.launch.subprocess.Popen", no_torchrun)
    with pytest.raises(UsageError, match="already holds"):
        launch(path, 2, [])
