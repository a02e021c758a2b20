"""CUDA: predicted vs measured (torch.cuda.max_memory_allocated) and the snapshot.
Skipped without a GPU; `bench/gpu_check.sh` runs them (`pytest -m cuda`)."""

from pathlib import Path

import pytest
import torch

import gradoctor

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_predicted_peak_within_5_percent_on_cuda(name):
    p = gradoctor.memory_profile(
        ROOT / "recipes" / f"{name}.yaml", overrides={"train.device": "cuda"}
    )
    assert p.method == "cuda_allocator"
    ran = [c for c in p.checks if c.measured is not None]
    assert ran
    for check in ran:
        assert abs(check.error_pct) <= 5.0, check


def test_snapshot_is_written(tmp_path):
    path = tmp_path / "snapshot.pickle"
    p = gradoctor.memory_profile(
        ROOT / "recipes" / "mlp.yaml",
        overrides={"train.device": "cuda"},
        check=False,
        snapshot=path,
    )
    assert p.snapshot == str(path)
    assert path.is_file() and path.stat().st_size > 0
