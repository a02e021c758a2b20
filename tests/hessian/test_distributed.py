"""Curvature across 2 processes (gloo on CPU), checked against one process on the same batches:
``hessian_spectrum(process_group=...)``, ``gradoctor.curvature`` inside a process group, and
the sharpness instrument of a DDP run. One spawn runs every case (``_dist_worker.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import gradoctor
from gradoctor.hessian import hessian_spectrum
from gradoctor.hessian.sharpness_instrument import FSDP_REASON
from tests.conftest import base_recipe, free_port
from tests.hessian import _dist_worker as worker
from tests.hessian.conftest import cross_entropy_loss
from tests.hessian.test_recipe_curvature import regression_recipe

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

ADAM = {"optimizer._component_": "torch.optim.Adam", "optimizer.lr": 0.01}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("hessian_dist")
    trained = gradoctor.train(regression_recipe(out / "adam_train", **ADAM))
    mp.spawn(worker.run, args=(free_port(), str(out), str(trained.output_dir)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks, out, trained.output_dir


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def assert_same_on_both_ranks(a, b):
    """Bitwise: the ranks ran the same iterations on the same all-reduced vectors."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_on_both_ranks(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b or (a != a and b != b)  # NaN == NaN here


# ---- (a) hessian_spectrum ------------------------------------------------------------------
def test_spectrum_over_two_ranks_equals_one_process_on_all_batches(runs):
    ranks, _, _ = runs
    assert_same_on_both_ranks(ranks[0]["spectrum"], ranks[1]["spectrum"])
    got = ranks[0]["spectrum"]["full"]
    model, batches = worker.spectrum_problem()
    single = hessian_spectrum(model, cross_entropy_loss, batches, **worker.SPECTRUM)
    assert got["batches"] == 3 and got["hvps"] == single.hvps
    assert rel(got["eigenvalues"], single.eigenvalues) <= 1e-6  # measured 3e-15
    assert got["trace"]["estimate"] == pytest.approx(single.trace.estimate, rel=1e-6)
    assert got["trace"]["stderr"] == pytest.approx(single.trace.stderr, rel=1e-4)
    np.testing.assert_allclose(got["density"]["values"], single.density.values, rtol=1e-6)
    for name, layer in single.per_layer.items():
        assert got["per_layer"][name]["eigenvalue"] == pytest.approx(layer.eigenvalue, rel=1e-6)
        assert got["per_layer"][name]["trace"] == pytest.approx(layer.trace, rel=1e-6)
    # the same eigenvectors (up to sign)
    dots = (got["eigenvectors"] * single.eigenvectors).sum(0).abs()
    torch.testing.assert_close(dots, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-6)


def test_the_instruments_kind_of_call_and_a_rank_without_batches(runs):
    ranks, _, _ = runs
    model, batches = worker.spectrum_problem()
    single = hessian_spectrum(
        model, cross_entropy_loss, batches, **worker.preconditioned_inputs(model)
    )
    got = ranks[0]["spectrum"]["preconditioned"]
    assert got["hvps"] == single.hvps == 11  # 10 Lanczos + 1 Rayleigh
    assert rel(got["eigenvalues"], single.eigenvalues) <= 1e-6
    assert got["rayleigh"]["g"] == pytest.approx(single.rayleigh["g"], rel=1e-6)
    one = hessian_spectrum(model, cross_entropy_loss, batches[:1])
    got = ranks[0]["spectrum"]["one_batch"]
    assert got["batches"] == 1 and rel(got["eigenvalues"], one.eigenvalues) <= 1e-6


def test_failures_raise_on_every_rank_and_leave_the_group_usable(runs):
    ranks, _, _ = runs
    f0, f1 = (r["spectrum"]["failures"] for r in ranks)
    assert f0 == f1  # the same error on both ranks
    assert f0["random"]["error"] == "UserCodeError"
    assert "the loss is random on 1 of 2 ranks" in f0["random"]["message"]
    assert f0["v0_differs"]["error"] == "UsageError"
    assert "out of step" in f0["v0_differs"]["message"]
    assert f0["no_batches"]["error"] == "UsageError"
    assert "empty on all 2 ranks" in f0["no_batches"]["message"]
    assert f0["sync_batchnorm"]["error"] == "UsageError"
    assert "SyncBatchNorm in train mode (1)" in f0["sync_batchnorm"]["message"]
    assert f0["raises"]["error"] == "UserCodeError"
    assert f0["raises"]["message"].startswith("on rank 1 of 2: loss_fn(model, batch) raised")
    assert "ValueError on batch 0: boom on rank 1" in f0["raises"]["message"]
    assert ranks[0]["spectrum"]["after_failures"]["eigenvalues"]


# ---- (b) gradoctor.curvature -----------------------------------------------------------------
def test_curvature_over_two_ranks_equals_one_process_and_writes_json_once(runs):
    ranks, out, checkpoint = runs
    assert_same_on_both_ranks(ranks[0]["curvature"], ranks[1]["curvature"])
    got = ranks[0]["curvature"]["sgd"]
    single = gradoctor.curvature(
        regression_recipe(out / "single", precision="bf16"), **worker.CURVATURE
    )
    assert got["batches"] == 5 and got["hvps"] == single.hvps
    assert rel(got["eigenvalues"], single.eigenvalues) <= 1e-4
    assert got["trace"]["estimate"] == pytest.approx(single.trace.estimate, rel=1e-4)
    assert got["stability"]["sharpness"] == pytest.approx(single.stability["sharpness"], rel=1e-4)
    layer = next(iter(single.per_layer.values()))
    assert next(iter(got["per_layer"].values()))["eigenvalue"] == pytest.approx(
        layer.eigenvalue, rel=1e-4
    )
    assert got["notes"][0] == single.notes[0]  # "... the run's first 5 batch(es)"
    assert "2 ranks: batch i measured on rank i mod 2" in " ".join(got["notes"])
    assert any("under the recipe's bf16 autocast" in n for n in got["notes"])
    # only rank 0 wrote its --json
    assert not (out / "curv_rank1.json").exists()
    written = json.loads((out / "curv_rank0.json").read_text())
    assert written["eigenvalues"] == got["eigenvalues"] and written["batches"] == 5

    adam = ranks[0]["curvature"]["adam"]
    single = gradoctor.curvature(
        regression_recipe(out / "single_adam", **ADAM), checkpoint=checkpoint, batches=3
    )
    assert adam["stability"]["preconditioned"]
    assert adam["stability"]["sharpness"] == pytest.approx(single.stability["sharpness"], rel=1e-4)


# ---- (c) the sharpness instrument under DDP ------------------------------------------------
def single_run(out, **changes):
    recipe = base_recipe(
        out, **worker.TRAIN, **changes, **{"data.batch_size": 16, "diagnostics.sharpness_every": 3}
    )
    return gradoctor.train(recipe)


def test_ddp_sharpness_leaves_the_losses_unchanged(runs):
    ranks, _, _ = runs
    for rank in ranks:
        train = rank["train"]
        assert train["sgd_on"]["loss"] == train["sgd_off"]["loss"]
        assert not train["sgd_off"]["sharpness"]
    assert_same_on_both_ranks(ranks[0]["train"], ranks[1]["train"])


@pytest.mark.parametrize(("run", "changes"), [("sgd_on", worker.SGD), ("adamw_on", {})])
def test_ddp_sharpness_equals_one_process_on_the_same_global_batch(runs, tmp_path, run, changes):
    ranks, _, _ = runs
    got = ranks[0]["train"][run]["sharpness"]
    single = single_run(tmp_path / "single", **changes).history["sharpness"]
    assert [r["step"] for r in got] == [r["step"] for r in single] == [3, 6]
    for a, b in zip(got, single):
        assert a["preconditioned"] == b["preconditioned"] == (run == "adamw_on")
        assert a["sharpness"] == pytest.approx(b["sharpness"], rel=1e-4)
        assert a["batch_sharpness"] == pytest.approx(b["batch_sharpness"], rel=1e-4)
        assert a["threshold"] == pytest.approx(b["threshold"], rel=1e-12)
        assert a["hvps"] == b["hvps"]


def test_fsdp_records_why_sharpness_is_not_measured(runs):
    ranks, _, _ = runs
    assert ranks[0]["train"]["fsdp_on"]["sharpness"] == [{"step": 3, "error": FSDP_REASON}]
