"""Stop signals: SIGTERM and SIGHUP end a run like the first Ctrl-C (at the next step
boundary, report, events and checkpoint written, exit 128 + the signal), a second signal
stops it at once with a message that says no checkpoint of the half-done step was written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import gradoctor
from gradoctor.errors import TrainingInterrupted
from gradoctor.training.checkpoint_io import load_checkpoint
from tests.conftest import MODELS, ROOT_DIR


def _signalled(signal_name: str, times: int = 1, at_batch: int = 7) -> dict:
    return {
        "data._component_": f"{MODELS}:InterruptingData",
        "data.at_batch": at_batch,
        "data.signal_name": signal_name,
        "data.times": times,
    }


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_stop_signal_saves_the_run_and_resumes_bitwise(recipe_factory, name, code):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    full = gradoctor.train(
        recipe_factory(**_signalled(name, at_batch=10**6), **{"train.steps": 12})
    )
    with pytest.raises(TrainingInterrupted) as err:
        gradoctor.train(recipe_factory(**_signalled(name), **{"train.steps": 12}))
    assert err.value.exit_code == code
    run = err.value.result
    assert run.status == "interrupted" and run.steps_completed == 7  # batch 7 is step 7's
    assert load_checkpoint(Path(run.output_dir))["step"] == 7
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # nothing left behind
    resumed = gradoctor.train(
        recipe_factory(**_signalled(name, at_batch=10**6), **{"train.steps": 12}),
        resume=run.output_dir,
    )
    assert resumed.history["loss"] == full.history["loss"]  # bitwise


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once_and_says_no_checkpoint(recipe_factory, name):
    with pytest.raises(TrainingInterrupted) as err:
        gradoctor.train(recipe_factory(**_signalled(name, times=2), **{"train.steps": 12}))
    run = err.value.result
    assert run.status == "interrupted" and run.steps_completed == 6
    assert "no checkpoint of the half-done step" in str(err.value)
    assert "run it again" in str(err.value) and "--resume" not in str(err.value)
    assert not (Path(run.output_dir) / "checkpoint.pt").exists()


def test_sigterm_through_the_cli_exits_143_with_report_and_checkpoint(tmp_path):
    """A real process: the CLI's exit status and files, as a scheduler would see them."""
    from tests.conftest import base_recipe

    recipe = base_recipe(tmp_path / "run", **_signalled("SIGTERM"), **{"train.steps": 12})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "gradoctor", "train", str(path), "-q"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 143, proc.stderr
    assert "stopped by SIGTERM at step 7" in proc.stderr and "--resume" in proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "interrupted" and report["steps_completed"] == 7
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
