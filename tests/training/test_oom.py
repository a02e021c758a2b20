"""An out-of-memory error stops the run cleanly: exit 4, report with a memory diagnosis."""

import json

import yaml
from typer.testing import CliRunner

from gradoctor.cli import app
from gradoctor.training.checkpoint_io import load_checkpoint
from tests.conftest import MODELS, base_recipe


def test_oom_exits_4_with_report_and_memory_diagnosis(tmp_path):
    recipe = base_recipe(
        tmp_path / "run", **{"model._component_": f"{MODELS}:OOMAtCall", "model.at": 3}
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 4, result.output
    assert "out of memory" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed" and report["steps_completed"] == 2
    (memory,) = [d for d in report["diagnoses"] if d["code"] == "memory"]
    assert memory["severity"] == "error" and memory["fix"] and memory["steps"] == [3]
    # The failing batch is read from the training step's frame (training/step.py).
    assert memory["evidence"]["batch_size"] == 8 and memory["evidence"]["activations_estimate"]
    # The TensorBoard events are flushed; the half-done step is undone and the last completed
    # one checkpointed, so the run resumes after the fix.
    run = tmp_path / "run"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert f"--resume {run}" in " ".join(result.output.split())
