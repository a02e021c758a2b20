"""One run per output folder: a live run's lock refuses a second (exit 2, its PID named), a
stale lock (its process is gone) is taken over, and no lock outlives its run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import gradoctor
from gradoctor.errors import UsageError
from gradoctor.training.run_lock import LOCK_NAME


def _lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))


def test_a_live_run_refuses_a_second_one_in_its_folder(recipe_factory, tmp_path):
    recipe = recipe_factory()
    out = tmp_path / "run0"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(out, other.pid)
        (out / "report.json").write_text('{"from": "the other run"}')
        with pytest.raises(UsageError) as err:
            gradoctor.train(recipe)
        assert err.value.exit_code == 2 and f"pid {other.pid}" in str(err.value)
        assert json.loads((out / "report.json").read_text()) == {"from": "the other run"}
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_no_lock_outlives_the_run(recipe_factory, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(tmp_path / "run0", dead.pid)
    result = gradoctor.train(recipe_factory())
    assert result.status == "completed"
    assert not (tmp_path / "run0" / LOCK_NAME).exists()


def test_a_failed_run_releases_its_lock(recipe_factory, tmp_path):
    from tests.conftest import MODELS

    with pytest.raises(gradoctor.OutOfMemory):
        gradoctor.train(recipe_factory(**{"model._component_": f"{MODELS}:OOMAtCall"}))
    assert not (tmp_path / "run0" / LOCK_NAME).exists()
    assert os.listdir(tmp_path / "run0")  # the report and events are there
