"""Overhead of gradoctor's instruments: the same model, data and precision trained by a plain
PyTorch loop and by gradoctor's Trainer (default instruments), interleaved in one process.

    python bench/overhead.py                 # CPU: the shipped MLP / CNN / tiny LM recipes
    python bench/overhead.py --gpu           # CUDA: ~110M-param transformer bf16, ResNet-50 fp16

Each round runs ``--block`` steps of the plain loop, then ``--block`` steps of gradoctor (the
order alternates per round), timing each block (with a device sync at the block's end on CUDA).
The block is a multiple of the log interval, so each gradoctor block pays its one host sync.
Prints per config: ms/step of both, and the ratio gradoctor/plain as the median over rounds
with its min..max spread. Goal: <= 1.05 on CPU, <= 1.03 on the GPU configs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradoctor.devices import pick_device  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402
from gradoctor.training.activation_checkpointing import apply_checkpointing  # noqa: E402
from gradoctor.training.batches import compute_loss, to_device  # noqa: E402
from gradoctor.training.build import build_components  # noqa: E402
from gradoctor.training.environment import seed_everything  # noqa: E402
from gradoctor.api import make_trainer  # noqa: E402
from gradoctor.training.precision import autocast, make_scaler  # noqa: E402

SM = ROOT / "sample_models"
BENCH = ROOT / "bench"
CPU_CONFIGS = {name: ROOT / "recipes" / f"{name}.yaml" for name in ("mlp", "cnn", "tiny_lm")}
GPU_CONFIGS = {
    "gpt110m-bf16": {
        "model": {
            "_component_": f"{SM}/tiny_lm.py:TinyLM",
            "vocab_size": 32000,
            "d_model": 768,
            "n_layers": 12,
            "n_heads": 12,
            "seq_len": 512,
        },
        "data": {"_component_": f"{BENCH}/components.py:tokens", "batch_size": 16, "seq_len": 512},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-4, "fused": True},
        "precision": "bf16",
        "train": {"clip_grad_norm": 1.0},
    },
    "resnet50-fp16": {
        "model": {"_component_": f"{BENCH}/components.py:resnet50"},
        "data": {"_component_": f"{BENCH}/components.py:images", "batch_size": 128},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
        "precision": "fp16",
    },
}


class PlainLoop:
    """What a careful user writes by hand: autocast, GradScaler, accumulation, clipping."""

    def __init__(self, recipe, device):
        seed_everything(recipe.train.seed)
        parts = build_components(recipe, device)
        self.model, self.opt, self.sched, self.loss_fn = (
            parts.model,
            parts.optimizer,
            parts.scheduler,
            parts.loss_fn,
        )
        self.data, self.it = parts.data, iter(parts.data)
        apply_checkpointing(self.model, recipe.train.checkpoint)  # the same recompute as gradoctor
        self.recipe, self.device = recipe, device
        self.scaler = make_scaler(recipe.precision, device, recipe.grad_scaler)

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.data)
            return next(self.it)

    def micro_step_context(self, last: bool):
        """What wraps each micro-batch's forward and backward (DDP: ``no_sync`` but the last)."""
        return contextlib.nullcontext()

    def step(self):
        accum = self.recipe.train.accum_steps
        for micro in range(accum):
            batch = to_device(self._next(), self.device)
            with self.micro_step_context(last=micro == accum - 1):
                with autocast(self.recipe.precision, self.device):
                    loss = compute_loss(self.model, batch, self.loss_fn)
                self.scaler.scale(loss / accum).backward()
        self.scaler.unscale_(self.opt)
        if self.recipe.train.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.recipe.train.clip_grad_norm
            )
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()


class GradoctorLoop:
    def __init__(self, recipe):
        self.trainer = make_trainer(recipe)

    def step(self):
        t = self.trainer
        t.step()
        if t.record.used == t.every:
            t.flush()


def _time_block(loop, steps, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


ABLATIONS = {  # what each instrument costs: the default run without it (diagnostics overrides)
    "default": {},
    "no-snapshot": {"snapshot_every": 10**9},
    "no-activations": {"activation_every": 0},
    "no-histograms": {"histogram_every": 0},
    "every-50": {"every": 50},
}


def bench_config(name, recipe_src, rounds, block, warmup, device_name, out_dir, diagnostics=None):
    overrides = {
        "train": {"steps": 10**9, "device": device_name},
        "output": {"dir": str(out_dir / name)},
    }
    if diagnostics:
        overrides["diagnostics"] = diagnostics
    recipe = load_recipe(recipe_src, overrides)
    device = pick_device(recipe.train.device)
    if isinstance(recipe_src, dict):
        for comp in (recipe.data,):
            if "device" in comp.kwargs or comp.target.endswith((":tokens", ":images")):
                comp.kwargs["device"] = str(device)
    plain, doctor = PlainLoop(recipe, device), GradoctorLoop(recipe)
    for loop in (plain, doctor):
        _time_block(loop, warmup, device)
    ratios, t_plain, t_doc = [], [], []
    for r in range(rounds):
        order = (plain, doctor) if r % 2 == 0 else (doctor, plain)
        times = {id(loop): _time_block(loop, block, device) for loop in order}
        t_plain.append(times[id(plain)])
        t_doc.append(times[id(doctor)])
        ratios.append(times[id(doctor)] / times[id(plain)])
    doctor.trainer.record.tb.close()
    return {
        "config": name,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "precision": recipe.precision,
        "plain_ms": 1000 * statistics.median(t_plain),
        "gradoctor_ms": 1000 * statistics.median(t_doc),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": rounds,
        "block": block,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run the GPU configs on CUDA")
    parser.add_argument("--configs", default=None, help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--block",
        type=int,
        default=20,
        help="steps per timed block (a multiple of diagnostics.every)",
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--ablate", default=None, help="one config: also time it without each instrument"
    )
    args = parser.parse_args(argv)
    configs = GPU_CONFIGS if args.gpu else CPU_CONFIGS
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    device = "cuda" if args.gpu else "cpu"
    rows = []
    if args.ablate:
        src = configs[args.ablate]
        with tempfile.TemporaryDirectory() as tmp:
            for label, diag in ABLATIONS.items():
                block = max(args.block, 50) if "every" in diag else args.block
                row = bench_config(
                    args.ablate, src, args.rounds, block, args.warmup, device, Path(tmp), diag
                )
                row["config"] = f"{args.ablate}:{label}"
                rows.append(row)
                print(_format(row), flush=True)
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in configs.items():
            try:
                rows.append(
                    bench_config(name, src, args.rounds, args.block, args.warmup, device, Path(tmp))
                )
            except Exception as exc:  # report and go on with the other configs
                rows.append({"config": name, "error": f"{type(exc).__name__}: {exc}"})
            print(_format(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def _format(row):
    if "error" in row:
        return f"{row['config']:<16} ERROR {row['error']}"
    goal = 1.03 if row["device"] != "cpu" else 1.05
    verdict = "ok" if row["ratio_median"] <= goal else "OVER"
    return (
        f"{row['config']:<28} {row['device']:<22} {row['precision']:<5} plain {row['plain_ms']:8.2f} ms  "
        f"gradoctor {row['gradoctor_ms']:8.2f} ms  ratio {row['ratio_median']:.3f} "
        f"[{row['ratio_min']:.3f}..{row['ratio_max']:.3f}]  goal <= {goal} {verdict}"
    )


if __name__ == "__main__":
    main()
