"""The tree-agnostic half of ``bench/overhead.py``: the plain loop, the gradoctor loop and the
measurements that run against any gradoctor tree, before or after the ``gradoctor/train`` ->
``gradoctor/training`` restructure.

``bench/overhead.py`` imports it in-process (its own tree), and ``--base DIR`` runs it once
per round and tree as a subprocess::

    PYTHONPATH=<tree> python bench/overhead_tree.py '<job as JSON>'

which imports ``gradoctor`` from ``<tree>`` (the script's own folder, ``bench/``, comes first
on ``sys.path`` but holds no ``gradoctor``), and prints one JSON line: ``gradoctor.__file__``
(the proof of which tree ran), the whole-call times and the per-step block times.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import gradoctor

try:
    from gradoctor.training.activation_checkpointing import apply_checkpointing
    from gradoctor.training.batches import compute_loss, to_device
    from gradoctor.training.build import build_components
    from gradoctor.training.environment import pick_device, seed_everything
    from gradoctor.training.precision import autocast, make_scaler
except ModuleNotFoundError as exc:  # a tree before the restructure (e.g. 602e1e1)
    if exc.name != "gradoctor.training":
        raise
    from gradoctor.train.activation_checkpointing import apply_checkpointing
    from gradoctor.train.batches import compute_loss, to_device
    from gradoctor.train.build import build_components
    from gradoctor.train.environment import pick_device, seed_everything
    from gradoctor.train.precision import autocast, make_scaler
from gradoctor.api import train as gradoctor_train
from gradoctor.recipe import load_recipe

TREE = Path(gradoctor.__file__).resolve().parents[1]

# The --whole model: a 9-layer 256-wide MLP on recipes/mlp.yaml's data, fp32 AdamW.
WHOLE_STEPS = 150
WHOLE_VARIANTS = {  # diagnostics overrides: what the defaults cost
    "default": {},
    "every-50": {"every": 50},
    "no-hist-act": {"histogram_every": 0, "activation_every": 0},
    "no-audit": {"audit": "off"},  # the default first-step numerics audit's share
}


def whole_recipe(steps: int = WHOLE_STEPS) -> dict[str, Any]:
    return {
        "model": {
            "_component_": f"{TREE}/sample_models/mlp.py:MLP",
            "in_features": 20,
            "hidden": 256,
            "out_features": 4,
            "depth": 9,
        },
        "data": {
            "_component_": "gradoctor.data.synthetic_classification",
            "batch_size": 128,
            "n_samples": 8192,
            "n_features": 20,
            "n_classes": 4,
            "noise": 0.5,
            "seed": 0,
        },
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1.0e-3, "weight_decay": 0.01},
        "precision": "fp32",
        "train": {"steps": steps, "seed": 0, "device": "cpu"},
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

    def close(self):
        pass


class DoctorLoop:
    """gradoctor's Trainer stepped as ``Trainer.run`` steps it: one step, and at each log
    interval the flush (the one host copy) and the guard's snapshot check. Builds the Trainer
    with ``gradoctor.api.make_trainer`` where the tree has it, else ``gradoctor.train.loop``."""

    def __init__(self, recipe):
        try:
            from gradoctor.api import make_trainer
        except ImportError:  # before the restructure: the Trainer built its own instruments
            from gradoctor.train.loop import Trainer as make_trainer
        self.trainer = t = make_trainer(recipe)
        self._new = hasattr(t, "record")
        self._collector = t.record if self._new else t.buffer
        self._snapshot()  # Trainer.run snapshots the starting state

    def _snapshot(self):
        t = self.trainer
        if self._new:
            t.guard.maybe_snapshot(t.state)
        else:
            t.guard.maybe_snapshot()

    def step(self):
        t = self.trainer
        t.step()
        if self._collector.used >= t.every:
            t.flush()
            self._snapshot()

    def close(self):
        t = self.trainer
        (t.record.tb if self._new else t.tb).close()
        if self._new:
            t.stepper.close()
        else:
            t._hook.remove()


def time_block(loop, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps (a device sync at both ends on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def whole_gradoctor(recipe: dict[str, Any], diagnostics: dict[str, Any], out_dir: Path) -> float:
    """Wall seconds of one ``gradoctor.train`` call: recipe check, setup, the steps, the final
    flush, diagnoses, report.json, checkpoint, TensorBoard close."""
    recipe = {**recipe, "diagnostics": diagnostics, "output": {"dir": str(out_dir)}}
    start = time.perf_counter()
    result = gradoctor_train(recipe)
    elapsed = time.perf_counter() - start
    if result.status != "completed":
        raise RuntimeError(f"gradoctor.train ended {result.status}: {result.error}")
    return elapsed


def whole_plain(recipe: dict[str, Any]) -> float:
    """Wall seconds of the plain loop: seeding, model/optimizer/data construction and the same
    steps (the recipe is parsed before the clock starts: a hand-written loop has none)."""
    loaded = load_recipe(recipe)
    device = torch.device("cpu")
    start = time.perf_counter()
    loop = PlainLoop(loaded, device)
    for _ in range(loaded.train.steps):
        loop.step()
    return time.perf_counter() - start


def whole_warmup(out_dir: Path) -> None:
    """One short untimed run of each (first-call imports and caches paid here): enough steps
    for a flush, a snapshot, update ratios, histograms off the clock."""
    recipe = whole_recipe(steps=20)
    whole_gradoctor(recipe, {"histogram_every": 10, "activation_every": 10}, out_dir / "warmup")
    whole_plain(recipe)


def whole_round(
    r: int, out_dir: Path, variants: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, float]]:
    """One round of the whole-call comparison: per variant ``{"plain": s, "gradoctor": s}``,
    the order plain/gradoctor alternating with ``r``."""
    recipe = whole_recipe()
    out: dict[str, dict[str, float]] = {}
    for label, diagnostics in (variants or WHOLE_VARIANTS).items():
        times = {}
        for kind in ("plain", "gradoctor") if r % 2 == 0 else ("gradoctor", "plain"):
            if kind == "plain":
                times[kind] = whole_plain(recipe)
            else:
                times[kind] = whole_gradoctor(recipe, diagnostics, out_dir / f"{label}-{r}")
        out[label] = times
    return out


def steps_round(
    src: str | dict[str, Any],
    r: int,
    block: int,
    warmup: int,
    pairs: int,
    out_dir: Path,
    device_name: str = "cpu",
) -> list[tuple[float, float]]:
    """Per-step times of one config in a fresh plain loop and a fresh gradoctor loop:
    ``pairs`` interleaved blocks of ``block`` steps each, ``(plain_s, gradoctor_s)`` per pair."""
    overrides = {"train": {"steps": 10**9, "device": device_name}, "output": {"dir": str(out_dir)}}
    recipe = load_recipe(src, overrides)
    device = pick_device(recipe.train.device)
    plain, doctor = PlainLoop(recipe, device), DoctorLoop(recipe)
    for loop in (plain, doctor):
        time_block(loop, warmup, device)
    out = []
    for k in range(pairs):
        order = (plain, doctor) if (r + k) % 2 == 0 else (doctor, plain)
        times = {id(loop): time_block(loop, block, device) for loop in order}
        out.append((times[id(plain)], times[id(doctor)]))
    doctor.close()
    return out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One subprocess round: ``job`` = {round, threads, whole (bool), configs {name: recipe
    path relative to the tree}, block, warmup, pairs}."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    r = job["round"]
    out: dict[str, Any] = {"gradoctor_file": gradoctor.__file__, "whole": {}, "steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if job.get("whole"):
            whole_warmup(Path(tmp))
            out["whole"] = whole_round(r, Path(tmp))
        for name, rel in job.get("configs", {}).items():
            out["steps"][name] = steps_round(
                str(TREE / rel),
                r,
                job["block"],
                job["warmup"],
                job["pairs"],
                Path(tmp) / name,
            )
    return out


if __name__ == "__main__":
    print(json.dumps(run_job(json.loads(sys.argv[1]))))
