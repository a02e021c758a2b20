"""Overhead of gradoctor under DDP: 2 CPU processes over gloo, a plain DDP loop vs gradoctor's
Trainer (default instruments, ``distributed: {strategy: ddp}``), interleaved in the same
processes.

    python bench/ddp_overhead.py                     # the shipped MLP recipe
    python bench/ddp_overhead.py --recipe recipes/tiny_lm.yaml --rounds 8

Each round times ``--block`` steps of the plain loop and ``--block`` steps of gradoctor (the
order alternates per round; a barrier at each block's ends, so a block's time is the slowest
rank's). The block is a multiple of the log interval, so each gradoctor block pays its one
host sync and its one interval collective. Prints ms/step of both and the ratio
gradoctor/plain as the median over rounds with its min..max spread. Goal: <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import PlainLoop  # noqa: E402
from gradoctor.api import make_trainer  # noqa: E402
from gradoctor.distributed.sampler import distribute_data  # noqa: E402
from gradoctor.distributed.wrap import no_sync  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402


class PlainDDP(PlainLoop):
    """PlainLoop (autocast, GradScaler, accumulation, clipping) with DDP, ``no_sync`` on
    micro-steps and a DistributedSampler: what a careful user writes by hand."""

    def __init__(self, recipe, device, trainer):
        super().__init__(recipe, device)
        self.model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.data = distribute_data(self.data, trainer.dist, recipe.train.seed)
        self.it = iter(self.data)

    def micro_step_context(self, last: bool):
        return no_sync(self.model, "ddp", last_micro_step=last)


class DoctorDDP:
    def __init__(self, trainer):
        self.trainer = trainer

    def step(self):
        t = self.trainer
        t.step()
        if t.record.used == t.every:
            t.flush()  # host sync + the interval's all_reduce


def _time_block(loop, steps):
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    dist.barrier()
    return (time.perf_counter() - start) / steps


def worker(rank, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", rank=rank, world_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(
            args.recipe,
            {
                "train": {"steps": 10**9, "device": "cpu"},
                "output": {"dir": f"{tmp}/run", "tensorboard": True},
                "distributed": {"strategy": "ddp"},
            },
        )
        trainer = make_trainer(recipe)
        plain, doctor = PlainDDP(recipe, trainer.device, trainer), DoctorDDP(trainer)
        for loop in (plain, doctor):
            _time_block(loop, args.warmup)
        t_plain, t_doc, ratios = [], [], []
        for r in range(args.rounds):
            order = (plain, doctor) if r % 2 == 0 else (doctor, plain)
            times = {id(loop): _time_block(loop, args.block) for loop in order}
            t_plain.append(times[id(plain)])
            t_doc.append(times[id(doctor)])
            ratios.append(times[id(doctor)] / times[id(plain)])
        trainer.record.tb.close()
    if rank == 0:
        print(
            f"{Path(args.recipe).stem} ddp x2 cpu/gloo: plain {1000 * statistics.median(t_plain):.2f} ms/step, "
            f"gradoctor {1000 * statistics.median(t_doc):.2f} ms/step, ratio median "
            f"{statistics.median(ratios):.3f} (min {min(ratios):.3f} .. max {max(ratios):.3f}) "
            f"over {args.rounds} rounds of {args.block} steps"
        )
    dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "mlp.yaml"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=20, help="a multiple of diagnostics.every")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
