"""Runs inside each of the 2 spawned processes of test_ddp_fsdp.py (gloo on CPU, loopback)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from gradoctor.api import make_trainer
from gradoctor.recipe import load_recipe
from tests.conftest import base_recipe
from tests.distributed.cases import CASES


def _full_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for p in model.parameters()
    ]


def _counting_allreduce(calls, bucket):
    """DDP's default all-reduce, counted (``calls`` is the hook's state)."""
    calls[0] += 1
    return allreduce_hook(None, bucket)


def run(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for name, case in CASES.items():
        recipe = load_recipe(base_recipe(f"{out_dir}/{name}", **case["distributed"]))
        trainer = make_trainer(recipe)
        calls = [0]
        if trainer.dist.strategy == "ddp":
            trainer.state.train_model.register_comm_hook(calls, _counting_allreduce)
        sampler = trainer.state.data.data.sampler
        indices = [list(iter(sampler))] if hasattr(sampler, "set_epoch") else [None]
        seen = [None, None]
        dist.all_gather_object(seen, indices[0])
        result = trainer.run()
        results[name] = {
            "result": result.to_dict(),
            "params": _full_params(result.model),
            "allreduce_calls": calls[0],
            "indices": seen,
        }
        dist.barrier()
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
