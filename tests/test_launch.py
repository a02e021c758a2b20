"""`gradoctor train --nproc-per-node N` (``gradoctor.launch``): the torchrun command line, the
usage errors, and real runs through torchrun (2 CPU processes, gloo, loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gradoctor.errors import UsageError
from gradoctor.launch import launch, torchrun_command
from tests.conftest import ROOT_DIR, base_recipe
from tests.distributed.cases import DIST_MODELS

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def test_torchrun_command_reruns_the_cli_on_each_rank():
    cmd = torchrun_command(Path("r.yaml"), 3, ["train.steps=5"], resume=Path("runs/r"), quiet=True)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in cmd and "--standalone" in cmd
    at = cmd.index("gradoctor")
    assert cmd[at - 1 :] == ["-m", "gradoctor", "train", "r.yaml", "train.steps=5"] + [
        "--fail-on=never",  # the parent applies --fail-on to rank 0's report
        "--resume=runs/r",
        "--quiet",
    ]


@pytest.mark.parametrize(
    ("nproc", "env", "message"),
    [
        (0, {}, "at least 1"),
        (2, {"RANK": "0", "WORLD_SIZE": "2"}, "inside a torchrun worker"),
    ],
)
def test_usage_errors_before_any_process_starts(monkeypatch, nproc, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError, match=message):
        launch(Path("never-read.yaml"), nproc, [])


def _launch(tmp_path: Path, name: str, **changes) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / name
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(base_recipe(out, **changes)))
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
    proc = subprocess.run(
        [sys.executable, "-m", "gradoctor", "train", str(recipe), "-q", "--nproc-per-node", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT_DIR,
    )
    return proc, out


def test_cli_nproc_per_node_trains_and_rank0_writes_the_report(tmp_path):
    proc, out = _launch(tmp_path, "ok", **{"train.steps": 4, "diagnostics.every": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and report["steps_completed"] == 4
    assert report["distributed"]["world_size"] == 2
    assert report["distributed"]["strategy"] == "ddp"  # the default under torchrun
    memory = report["distributed"]["memory_per_rank"]
    assert [m["rank"] for m in memory] == [0, 1] and all(m["rss_peak"] > 0 for m in memory)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert sorted(p.name for p in out.glob("*.json")) == ["report.json"]
    assert (out / "checkpoint.pt").is_file()


def test_a_rank_that_raises_stops_every_rank_with_its_message(tmp_path):
    proc, out = _launch(
        tmp_path,
        "fail",
        **{
            "model._component_": f"{DIST_MODELS}:RaiseOnRank",
            "model.rank": 1,
            "model.at": 3,
            "train.steps": 6,
        },
    )
    assert proc.returncode == 1
    report = json.loads((out / "report.json").read_text())  # written by rank 0
    assert report["status"] == "failed"
    assert "rank 1 failed" in report["error"] and "injected failure on rank 1" in report["error"]
    assert "injected failure on rank 1" in proc.stderr
