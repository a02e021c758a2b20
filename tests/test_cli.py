"""The command line, end to end through ``gradoctor.cli.app`` (typer's CliRunner).

Every test runs in a temporary working directory, so run folders (``runs/{recipe}``) land
there. Expected line numbers come from the files' own text.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app

ASSETS = Path(__file__).resolve().parent / "assets"
CONTRACT = ASSETS / "contract" / "recipe.yaml"
BROKEN_IMPORT = ASSETS / "broken_import" / "recipe.yaml"
RAISES = ASSETS / "raises_in_forward" / "recipe.yaml"
PACKAGE_DIR = Path(gradoctor.__file__).resolve().parent

CONTRACT_KEYS = {
    "steps_completed",
    "final_loss",
    "skipped_steps",
    "loss_scale",
    "grad_norms",
    "memory",
    "diagnoses",
    "recipe",
    "device",
    "precision",
    "duration_s",
}


def line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} occurs on lines {hits}"
    return hits[0]


def output_of(result) -> str:
    """stdout and stderr together, whether or not this click version mixes them."""
    text = result.output
    try:
        stderr = result.stderr
    except ValueError:  # click < 8.2 with mixed streams: already in output
        stderr = ""
    if stderr and stderr not in text:
        text += stderr
    return text


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke the app in tmp_path with a wide terminal (rich would otherwise wrap paths at 80)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


# ----------------------------------------------------------------------------- validate


def test_validate_ok(cli):
    result = cli("validate", CONTRACT)
    assert result.exit_code == 0, output_of(result)
    out = output_of(result)
    assert "ok" in out and "models.py:MLP" in out and "bf16" in out and "200 steps" in out


def test_validate_with_overrides(cli):
    result = cli("validate", CONTRACT, "train.steps=7", "precision=fp16")
    assert result.exit_code == 0, output_of(result)
    out = output_of(result)
    assert "7 steps" in out and "fp16" in out


BROKEN = """\
model:
  _component_: models.py:MLPP
optimiser:
  _component_: torch.optim.AdamW
  lr: 1.0e-3
data:
  _component_: models.py:make_data
precision: fp8
train:
  stpes: 10
"""


def test_validate_broken_recipe_lists_every_problem(cli, tmp_path: Path):
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    (tmp_path / "bad.yaml").write_text(BROKEN)
    result = cli("validate", "bad.yaml")
    assert result.exit_code == 2
    out = output_of(result)
    assert "ok" not in out.split()
    expected = {
        "optimiser": ("optimiser:", "did you mean 'optimizer'"),
        "model._component_": ("MLPP", "did you mean 'MLP'"),
        "precision": ("precision:", "fp32 | bf16 | fp16"),
        "train.stpes": ("stpes:", "did you mean 'steps'"),
    }
    for path, (needle, advice) in expected.items():
        assert f"{path} (line {line_of(BROKEN, needle)})" in out, path
        assert advice in out
    assert "optimizer: is required" in out  # the typo leaves the real key missing
    assert "5 problem(s)" in out


def test_validate_broken_import_points_at_the_users_line(cli):
    models = BROKEN_IMPORT.parent / "models.py"
    source = models.read_text()
    bad_line = line_of(source, "undefined_name  #")
    result = cli("validate", BROKEN_IMPORT)
    assert result.exit_code == 2
    out = output_of(result)
    assert f'File "{models}", line {bad_line}' in out
    assert source.splitlines()[bad_line - 1].strip() in out
    assert "NameError" in out
    assert str(PACKAGE_DIR) not in out


def test_validate_missing_file(cli):
    result = cli("validate", "nope.yaml")
    assert result.exit_code == 2
    assert "does not exist" in output_of(result)


# ----------------------------------------------------------------------------- train


def test_train_contract_recipe_writes_the_report(cli, tmp_path: Path):
    result = cli("train", CONTRACT, "train.steps=12", "precision=fp32", "diagnostics.every=4")
    assert result.exit_code == 0, output_of(result)
    run_dir = tmp_path / "runs" / "recipe"
    report = json.loads((run_dir / "report.json").read_text())
    assert CONTRACT_KEYS <= set(report)
    assert report["steps_completed"] == 12
    assert report["status"] == "completed" and report["error"] is None
    assert report["precision"] == "fp32"
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert report["skipped_steps"] == [] and report["loss_scale"] is None  # no loss scaling in fp32
    assert (
        isinstance(report["final_loss"], float)
        and math.isfinite(report["final_loss"])
        and report["final_loss"] > 0
    )
    assert isinstance(report["memory"], dict) and isinstance(report["diagnoses"], list)
    assert report["duration_s"] > 0
    # Per-module gradient norms for the modules that own parameters (the two Linear layers).
    assert set(report["grad_norms"]) == {"net.0", "net.2"}
    for stats in report["grad_norms"].values():
        assert {"last", "max", "median"} <= set(stats)
        assert 0 < stats["median"] <= stats["max"] and 0 < stats["last"] <= stats["max"]
    # Every step is in the history, logged at steps 4, 8 and 12.
    assert report["history"]["step"] == list(range(1, 13))
    assert report["final_loss"] == report["history"]["loss"][-1]
    # The resolved recipe: the overrides applied, every default filled in.
    assert report["recipe"]["train"]["steps"] == 12
    assert report["recipe"]["precision"] == "fp32"
    assert report["recipe"]["diagnostics"]["every"] == 4
    assert report["recipe"]["model"] == {"_component_": "models.py:MLP", "hidden": 64}
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["train"]["steps"] == 12 and saved["precision"] == "fp32"
    assert saved == report["recipe"]
    assert (run_dir / "checkpoint.pt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_train_bad_override_exits_2_before_training(cli, tmp_path: Path):
    result = cli("train", CONTRACT, "train.stpes=3", "-q")
    assert result.exit_code == 2
    out = output_of(result)
    assert "train.stpes" in out and "did you mean 'steps'" in out
    assert not (tmp_path / "runs").exists()


def test_train_user_error_exits_1_with_their_line_and_a_failed_report(cli, tmp_path: Path):
    models = RAISES.parent / "models.py"
    source = models.read_text()
    bad_line = line_of(source, 'raise RuntimeError("boom in forward")')
    result = cli("train", RAISES, "-q")
    assert result.exit_code == 1
    out = output_of(result)
    assert "boom in forward" in out
    assert f'File "{models}", line {bad_line}, in forward' in out
    assert 'raise RuntimeError("boom in forward")' in out
    assert str(PACKAGE_DIR) not in out  # the user's frames only
    report = json.loads((tmp_path / "runs" / "recipe" / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["steps_completed"] == 2
    assert "boom in forward" in report["error"]
    assert report["history"]["step"] == [1, 2]
    # the failing step is undone: the checkpoint is of the last completed step, to resume from
    assert torch.load(tmp_path / "runs" / "recipe" / "checkpoint.pt")["step"] == 2
    assert "--resume" in out


# ----------------------------------------------------------------------------- report


def test_report_json_equals_report_file(cli, tmp_path: Path):
    assert cli("train", CONTRACT, "train.steps=3", "precision=fp32", "-q").exit_code == 0
    on_disk = json.loads((tmp_path / "runs" / "recipe" / "report.json").read_text())
    result = cli("report", "runs/recipe", "--json")
    assert result.exit_code == 0, output_of(result)
    assert json.loads(result.stdout) == on_disk
    # The report file itself works too, and the table renders.
    assert json.loads(cli("report", "runs/recipe/report.json", "--json").stdout) == on_disk
    table = cli("report", "runs/recipe")
    assert table.exit_code == 0, output_of(table)
    assert "net.0" in output_of(table)


def test_report_without_a_report_exits_2(cli, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = cli("report", "empty")
    assert result.exit_code == 2
    assert "no report.json" in output_of(result)


# ----------------------------------------------------------------------------- entry points


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "gradoctor", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "validate", "report"):
        assert command in proc.stdout


def test_no_arguments_shows_help(cli):
    result = cli()
    assert result.exit_code in (0, 2)  # click's no_args_is_help exit status changed across versions
    assert "validate" in output_of(result)
