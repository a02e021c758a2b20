"""Runs inside each of the 2 spawned processes of test_distributed.py (gloo on CPU, loopback).

Every case is run by both ranks in the same order; each rank saves what it got (values, or
the error it raised) to ``rank{r}.pt``. The cases' inputs are built here and, for the
single-process references, by the test itself (same functions, same seeds).
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist
from threadpoolctl import threadpool_limits

from gradoctor.errors import GradoctorError
from gradoctor.hessian import hessian_spectrum
from tests.conftest import base_recipe
from tests.hessian.conftest import classification_batches, cross_entropy_loss, tanh_mlp
from tests.hessian.test_recipe_curvature import regression_recipe

WORLD = 2

# (a) hessian_spectrum: 3 batches (rank 0 gets 0 and 2, rank 1 gets 1), float64 tanh MLP
SPECTRUM = {
    "top_k": 3,
    "trace": True,
    "trace_hvps": 30,
    "density": True,
    "density_steps": 12,
    "density_probes": 2,
    "per_layer": True,
    "seed": 3,
}
# (b) gradoctor.curvature of the linear-regression recipe: 5 batches (3 on rank 0, 2 on 1)
CURVATURE = {"top_k": 2, "trace": True, "per_layer": True, "batches": 5}
# (c) gradoctor.train under DDP: per-rank batch 8 x 2 ranks == one process's batch of 16
TRAIN = {"train.steps": 6, "train.accum_steps": 2, "diagnostics.every": 3, "train.seed": 0}
SGD = {"optimizer._component_": "torch.optim.SGD", "optimizer.lr": 0.5}


def spectrum_problem() -> tuple[torch.nn.Module, list]:
    return tanh_mlp(0), classification_batches(3, 16, (10,), 3, seed=5)


def preconditioned_inputs(model: torch.nn.Module) -> dict[str, Any]:
    """The sharpness instrument's kind of call: warm start, fixed budget, preconditioner and
    a Rayleigh direction (the same on every rank)."""
    g = torch.Generator().manual_seed(7)
    size = sum(p.numel() for p in model.parameters())
    return {
        "top_k": 1,
        "max_hvps": 10,
        "v0": torch.randn(size, generator=g, dtype=torch.float64),
        "preconditioner": torch.rand(size, generator=g, dtype=torch.float64) + 0.5,
        "rayleigh": {"g": torch.randn(size, generator=g, dtype=torch.float64)},
        "seed": 4,
    }


def summary(result) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("seconds", None)
    data["rayleigh"] = result.rayleigh
    data["eigenvectors"] = result.eigenvectors
    return data


def _caught(fn) -> dict[str, Any]:
    try:
        return {"value": fn()}
    except GradoctorError as exc:
        return {"error": type(exc).__name__, "message": exc.message}


def _spectrum_cases(rank: int) -> dict[str, Any]:
    model, batches = spectrum_problem()
    mine = batches[rank::WORLD]
    group = dist.group.WORLD
    out = {
        "full": summary(
            hessian_spectrum(model, cross_entropy_loss, mine, **SPECTRUM, process_group=group)
        ),
        "preconditioned": summary(
            hessian_spectrum(
                model,
                cross_entropy_loss,
                mine,
                **preconditioned_inputs(model),
                process_group=group,
            )
        ),
        # one batch: rank 1 has none
        "one_batch": summary(
            hessian_spectrum(
                model, cross_entropy_loss, batches[:1][rank::WORLD], process_group=group
            )
        ),
    }

    def noisy_on_rank1(m, batch):
        loss = cross_entropy_loss(m, batch)
        return loss + torch.rand(()) if rank == 1 else loss

    def raises_on_rank1(m, batch):
        if rank == 1:
            raise ValueError("boom on rank 1")
        return cross_entropy_loss(m, batch)

    size = sum(p.numel() for p in model.parameters())
    v0 = torch.randn(size, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    out["failures"] = {
        "random": _caught(
            lambda: hessian_spectrum(model, noisy_on_rank1, mine, process_group=group)
        ),
        "raises": _caught(
            lambda: hessian_spectrum(model, raises_on_rank1, mine, process_group=group)
        ),
        "v0_differs": _caught(
            lambda: hessian_spectrum(model, cross_entropy_loss, mine, v0=v0, process_group=group)
        ),
        "no_batches": _caught(
            lambda: hessian_spectrum(model, cross_entropy_loss, [], process_group=group)
        ),
        "sync_batchnorm": _caught(
            lambda: hessian_spectrum(
                torch.nn.Sequential(model, torch.nn.SyncBatchNorm(3)),
                cross_entropy_loss,
                mine,
                process_group=group,
            )
        ),
    }
    # the group still works after every failure: one more measurement in lockstep
    out["after_failures"] = summary(
        hessian_spectrum(model, cross_entropy_loss, mine, process_group=group)
    )
    return out


def _curvature_cases(rank: int, out_dir: str, checkpoint: str) -> dict[str, Any]:
    import gradoctor

    recipe = regression_recipe(f"{out_dir}/curv", precision="bf16")
    sgd = gradoctor.curvature(recipe, json_path=f"{out_dir}/curv_rank{rank}.json", **CURVATURE)
    adam_recipe = regression_recipe(
        f"{out_dir}/adam", **{"optimizer._component_": "torch.optim.Adam", "optimizer.lr": 0.01}
    )
    adam = gradoctor.curvature(adam_recipe, checkpoint=checkpoint, batches=3)
    return {"sgd": summary(sgd), "adam": summary(adam)}


def _train_cases(out_dir: str) -> dict[str, Any]:
    from gradoctor.api import make_trainer
    from gradoctor.recipe import load_recipe

    runs = {
        "sgd_on": {**SGD, "diagnostics.sharpness_every": 3},
        "sgd_off": {**SGD, "diagnostics.sharpness_every": 0},
        "adamw_on": {"diagnostics.sharpness_every": 3},
        "fsdp_on": {"diagnostics.sharpness_every": 3},
    }
    out = {}
    for name, changes in runs.items():
        strategy = "fsdp" if name.startswith("fsdp") else "ddp"
        recipe = base_recipe(
            f"{out_dir}/{name}",
            **TRAIN,
            **changes,
            **{"data.batch_size": 8, "distributed": {"strategy": strategy}},
        )
        result = make_trainer(load_recipe(recipe)).run()
        out[name] = {
            "loss": list(result.history["loss"]),
            "sharpness": list(result.history["sharpness"]),
        }
        dist.barrier()
    return out


def run(rank: int, port: int, out_dir: str, checkpoint: str) -> None:
    torch.set_num_threads(1)  # 2 processes on 2 cores; the same thread count on both ranks
    with threadpool_limits(limits=1):
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),  # a rank out of step fails, not hangs
        )
        results = {
            "spectrum": _spectrum_cases(rank),
            "curvature": _curvature_cases(rank, out_dir, checkpoint),
            "train": _train_cases(out_dir),
        }
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()
