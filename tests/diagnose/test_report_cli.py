"""--fail-on exit codes, `gradoctor report` re-rendering, diagnoses in TensorBoard."""

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from gradoctor.cli import app

ROOT = Path(__file__).resolve().parents[2]
NAN = str(ROOT / "recipes" / "zoo" / "nan_forward.yaml")
runner = CliRunner()


@pytest.mark.parametrize("fail_on, code", [("never", 0), ("warning", 3), ("error", 3)])
def test_fail_on_exit_codes_for_a_broken_run(fail_on, code, tmp_path):
    result = runner.invoke(
        app, ["train", NAN, "-q", f"output.dir={tmp_path}", "--fail-on", fail_on]
    )
    assert result.exit_code == code, result.output


def test_fail_on_warning_passes_a_healthy_run(tmp_path):
    mlp = str(ROOT / "recipes" / "mlp.yaml")
    result = runner.invoke(
        app,
        ["train", mlp, "-q", "train.steps=30", f"output.dir={tmp_path}", "--fail-on", "warning"],
    )
    assert result.exit_code == 0, result.output


def test_report_rerenders_the_triage(tmp_path):
    runner.invoke(app, ["train", NAN, "-q", f"output.dir={tmp_path}"])
    shown = runner.invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for text in ("nonfinite_origin", "energy", "gradient flow", "fix:", "✘"):
        assert text in shown.output
    as_json = runner.invoke(app, ["report", str(tmp_path), "--json"])
    report = json.loads(as_json.output)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "stopped" and report["nonfinite"][0]["replay"]["module"] == "energy"


def test_diagnoses_are_written_to_tensorboard_as_text(tmp_path):
    runner.invoke(app, ["train", NAN, "-q", f"output.dir={tmp_path}"])
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert "diagnoses" in acc.Tags()["tensors"]
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("diagnoses")]
    assert any("nonfinite_origin" in t and "energy" in t for t in texts)
