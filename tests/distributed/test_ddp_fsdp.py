"""DDP and FSDP2 over gloo with 2 CPU processes, checked against single-process runs.

One spawn runs every case (each process pays torch's import once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import gradoctor
from tests.conftest import base_recipe, free_port
from tests.distributed import _worker
from tests.distributed.cases import CASES

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker.run, args=(free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    singles = {
        name: gradoctor.train(base_recipe(out / f"single_{name}", **case["single"]))
        for name, case in CASES.items()
        if "single" in case
    }
    return ranks, singles, out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_matches_single_process_on_the_same_global_batch(runs, strategy):
    ranks, singles, _ = runs
    single = singles[strategy]
    for rank in ranks:
        for p, q in zip(rank[strategy]["params"], single.model.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
    report = ranks[0][strategy]["result"]
    assert report["status"] == "completed" and report["steps_completed"] == 6
    np.testing.assert_allclose(report["history"]["loss"], single.history["loss"], rtol=1e-5)
    for module, norms in single.grad_norms.items():
        for key in ("last", "max", "median"):
            assert report["grad_norms"][module][key] == pytest.approx(norms[key], rel=1e-4)
    np.testing.assert_allclose(
        report["history"]["grad_norm_total"], single.history["grad_norm_total"], rtol=1e-4
    )
    dist = report["distributed"]
    assert dist["world_size"] == 2 and dist["strategy"] == strategy
    assert [m["rank"] for m in dist["memory_per_rank"]] == [0, 1]
    assert all(m["rss_peak"] > 0 for m in dist["memory_per_rank"])


def test_each_rank_sees_different_data(runs):
    ranks, _, _ = runs
    rank0, rank1 = ranks[0]["ddp"]["indices"]
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(64))


def test_ddp_accumulation_reduces_once_per_optimizer_step(runs):
    ranks, _, _ = runs
    # 6 optimizer steps x 2 micro-batches: no_sync on the first, one bucket all-reduce each
    assert ranks[0]["ddp"]["allreduce_calls"] == 6


def test_nan_on_one_rank_is_reported_with_that_rank(runs):
    ranks, _, out = runs
    report = ranks[0]["nan_on_rank1"]["result"]
    assert report["status"] == "stopped"
    finding = report["nonfinite"][0]
    assert finding["step"] == 3 and finding["reason"] == "loss"
    assert finding["ranks"] == [1] and finding["replay_rank"] == 1
    assert finding["replay"]["phase"] in ("input", "forward")
    assert report["distributed"]["first_nonfinite"]["ranks"] == [1]
    # rank 1 agrees on the decision (same reduced statistics on every rank)
    assert ranks[1]["nan_on_rank1"]["result"]["status"] == "stopped"
    assert (out / "nan_on_rank1" / "report.json").is_file()
