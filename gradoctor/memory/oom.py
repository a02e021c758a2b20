"""Explain an out-of-memory error in ``gradoctor train``: what was alive, and what would fit.

``oom_diagnosis(model, recipe, device, exc)`` is called by the training loop after a
``torch.OutOfMemoryError``. It must be cheap and must never raise, so it measures nothing on
the device: it reads the allocator's counters and the error message, finds the failing batch in
the exception's frames, and runs the model's forward once on the *meta* device (shapes only, no
memory, no compute) under the profiler's tracker and ``FlopCounterMode``, which gives the bytes
each module saves for backward (at fp32 sizes: autocast does not apply to meta tensors) and its
FLOPs. The planner then picks the modules to checkpoint, and the batch size that fits is
scaled from the bytes the failed step needed. On any failure it degrades to a generic fix.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from gradoctor.diagnose.types import Diagnosis, fix_text
from gradoctor.memory import planner, summary
from gradoctor.memory.model import module_stats
from gradoctor.memory.tracking import StepTracker, unique_bytes
from gradoctor.memory.units import format_bytes
from gradoctor.recipe.schema import Recipe
from gradoctor.training.batches import batch_size as batch_size_of
from gradoctor.training.batches import compute_loss

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_HEADROOM = 0.95  # plan for 95% of the device: the allocator fragments


def oom_diagnosis(
    model: torch.nn.Module,
    recipe: Recipe,
    device: torch.device | str,
    exc: BaseException,
    *,
    step: int | None = None,
    batch: Any = None,
    launch: list[str] | None = None,
) -> dict[str, Any]:
    """One ``memory`` diagnosis entry (``code, severity, modules, steps, message, evidence,
    fix``, then ``commands``: the rerun and measure lines, which ``fix`` also ends with) for
    an OOM raised at ``step`` on ``batch`` (both found in the training loop's frame of the
    traceback when not given). ``launch``: the run's command-line options the printed rerun
    command repeats (``["--resume", DIR]``, ``["--nproc-per-node", N]``)."""
    step = step if step is not None else _frame_local(exc, "step", int)
    try:
        return _diagnose(model, recipe, torch.device(device), exc, step, batch, launch)
    except Exception as err:  # never raise from an error path
        return _generic(model, recipe, exc, step, f"{type(err).__name__}: {err}", launch=launch)


def _diagnose(
    model: torch.nn.Module,
    recipe: Recipe,
    device: torch.device,
    exc: BaseException,
    step: int | None,
    batch: Any = None,
    launch: list[str] | None = None,
) -> dict[str, Any]:
    ev = _evidence(model, recipe, device, exc)
    if batch is None:
        batch = _frame_local(exc, "batch", object, only=_BATCH_FRAMES)
    if batch is None:
        return _generic(
            model, recipe, exc, step, "the failing batch was not found", ev, launch=launch
        )
    b = batch_size_of(batch) or 1
    stats, flops = _meta_forward(model, batch, recipe)
    activations = sum(s.saved_total for s in stats if s.qname == "")
    fixed = ev["parameters"] + ev["gradients"] + ev["optimizer_state"]
    budget = int(_HEADROOM * ev["device_total"]) if ev.get("device_total") else None
    if budget is not None and ev.get("free") is not None and ev.get("torch_reserved"):
        budget = min(budget, ev["free"] + ev["torch_reserved"])  # a shared GPU: what we can use
    held = ev.get("torch_allocated") or ev.get("allocated") or fixed
    needed = max(held + ev["tried_to_allocate"], fixed + activations)
    ev.update(
        activations_estimate=activations,
        batch_size=b,
        needed_at_least=needed,
        budget=budget,
        method="meta-device forward (fp32 sizes)"
        + (" + allocator counters" if ev.get("allocated") or ev.get("torch_allocated") else ""),
    )
    cands = [
        planner.Candidate(s.qname, s.drop, s.spike, float(flops.get(s.qname, 0) or s.drop))
        for s in stats
        if s.qname and s.drop > 0
    ]
    chosen: list[str] = []
    if budget is not None and needed > budget:
        over = needed - budget
        chosen = planner.min_cost_cover(cands, over) or []
        spike = max((c.spike for c in cands if c.qname in chosen), default=0)
        chosen = planner.min_cost_cover(cands, over + spike) or chosen
        if not chosen:  # checkpointing alone cannot fit: take what frees the most, shrink the batch
            outer = {c.qname for c in cands}
            chosen = [c.qname for c in cands if planner.parent_of(c.qname, outer) is None]
    picked = [c for c in cands if c.qname in chosen]
    freed = sum(c.drop for c in picked) - max((c.spike for c in picked), default=0)
    if freed <= 0:  # checkpointing these would cost recompute for nothing
        chosen, picked, freed = [], [], 0
    per_sample = max(needed - fixed - freed, 1) / b
    fits = math.floor((budget - fixed) / per_sample) if budget is not None else b // 2
    fits = max(0, min(fits, b if chosen else b - 1))
    ev["checkpoint_frees_estimate"] = freed
    names = summary.recipe_names(model, chosen) if chosen else []
    ranked = sorted(stats, key=lambda s: -s.saved_total)
    modules = chosen + [s.qname for s in ranked if s.qname and s.qname not in chosen][:5]
    changes, notes, env = [], [], []
    autocast_helps = recipe.precision == "fp32"
    if budget is not None and needed <= budget:
        notes.append(
            "the step should fit: the allocator's cached blocks are fragmented, or another "
            "process took memory"
        )
        env = ["PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"]
    elif budget is not None and fixed > budget:
        notes.append(
            f"parameters, gradients and optimizer state alone need {format_bytes(fixed)}: "
            "shard them over several GPUs (distributed.strategy: fsdp), use an optimizer with "
            "less state, or a smaller model (autocast keeps fp32 weights: bf16 does not help)"
        )
        autocast_helps = False
    else:
        if names:
            changes.append(f"train.checkpoint={summary.yaml_list(names)}")
        if fits < 1:
            notes.append("even data.batch_size 1 does not fit")
        elif fits < b:
            changes.append(f"data.batch_size={fits}")
    if autocast_helps:
        changes.append("precision=bf16")
    where = f" at step {step}" if step is not None else ""
    message = (
        f"out of memory in {ev['phase']}{where}: the step needed at least "
        f"{format_bytes(needed)}"
        + (f" of {format_bytes(budget)} usable" if budget is not None else "")
        + f", {format_bytes(activations)} of it activations saved for backward "
        f"(batch {b}) and {format_bytes(fixed)} parameters, gradients and optimizer state"
    )
    commands = _commands(changes, recipe, env=env, launch=launch)
    return _entry(modules, step, message, ev, notes, commands)


def _meta_forward(
    model: torch.nn.Module, batch: Any, recipe: Recipe
) -> tuple[list, dict[str, int]]:
    """Per-module saved bytes and FLOPs of one forward on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = {
        name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    meta_batch = _to_meta(batch)
    tracker = StepTracker(model, None, torch.device("meta"), params=list(meta.values()))
    loss_fn = _loss_fn(recipe)

    def run(*args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(model, meta, args, kwargs, tie_weights=True)

    with FlopCounterMode(display=False) as counter, tracker.tracking():
        compute_loss(run, meta_batch, loss_fn)
    trace = tracker.finish(set(), set())
    root = type(model).__name__
    flops = {}
    for name, by_op in counter.get_flop_counts().items():
        if name != "Global":
            flops["" if name == root else name.removeprefix(root + ".")] = sum(by_op.values())
    return module_stats(trace), flops


def _to_meta(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return torch.empty_like(batch, device="meta")
    if isinstance(batch, dict):
        return {k: _to_meta(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_meta(v) for v in batch)
    return batch


def _loss_fn(recipe: Recipe) -> Any:
    if recipe.loss is None:
        return None
    from gradoctor.recipe.components import resolve_target

    return resolve_target(recipe.loss.target, recipe.base_dir)(**recipe.loss.kwargs)


def _evidence(
    model: torch.nn.Module, recipe: Recipe, device: torch.device, exc: BaseException
) -> dict[str, Any]:
    """Bytes known without running anything (allocator counters are host-side reads)."""
    params = list(model.parameters())
    param_bytes, _ = unique_bytes(params + list(model.buffers()), device.type)
    grad_bytes, _ = unique_bytes([p.grad for p in params if p.grad is not None], device.type)
    trainable, _ = unique_bytes([p for p in params if p.requires_grad], device.type)
    ev: dict[str, Any] = {
        "phase": _phase(exc),
        "parameters": param_bytes,
        "gradients": max(grad_bytes, trainable),  # all exist by the end of backward
        "optimizer_state": _optimizer_state_estimate(recipe, trainable),
        "tried_to_allocate": _parse_size(str(exc), r"Tried to allocate ([\d.]+ \w+)") or 0,
        "device_total": _parse_size(str(exc), r"total capacity of ([\d.]+ \w+)"),
        "free": _parse_size(str(exc), r"of which ([\d.]+ \w+) is free"),
        # "Of the allocated memory X is allocated by PyTorch, and Y is reserved by PyTorch but
        # unallocated": what this process holds (the rest of the card may be another's)
        "torch_allocated": _parse_size(str(exc), r"([\d.]+ \w+) is allocated by PyTorch"),
    }
    unallocated = _parse_size(str(exc), r"([\d.]+ \w+) is reserved by PyTorch but unallocated")
    if ev["torch_allocated"] is not None:
        ev["torch_reserved"] = ev["torch_allocated"] + (unallocated or 0)
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            ev["allocated"] = torch.cuda.memory_allocated(device)
            ev["max_allocated"] = torch.cuda.max_memory_allocated(device)
            ev["reserved"] = torch.cuda.memory_reserved(device)
            ev["device_total"] = (
                ev["device_total"] or torch.cuda.get_device_properties(device).total_memory
            )
    return ev


def _optimizer_state_estimate(recipe: Recipe, trainable: int) -> int:
    """Adam-family: two fp32 buffers per parameter; SGD with momentum: one; plain SGD: none."""
    name = recipe.optimizer.target.rsplit(".", 1)[-1].rsplit(":", 1)[-1].lower()
    if name.startswith("sgd"):
        return trainable if recipe.optimizer.kwargs.get("momentum", 0) else 0
    if name in {"adagrad", "rmsprop"}:
        return trainable
    return 2 * trainable


def _phase(exc: BaseException) -> str:
    names = [f.f_code.co_name for f, _ in _frames(exc)]
    files = [f.f_code.co_filename for f, _ in _frames(exc)]
    if any("torch/autograd" in p or "run_backward" in n for n, p in zip(names, files)):
        return "backward"
    if any("torch/optim" in p or "grad_scaler" in p for p in files):
        return "optimizer step"
    return "forward"


def _frames(exc: BaseException) -> list[tuple[Any, int]]:
    tb, out = exc.__traceback__, []
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


_BATCH_FRAMES = (  # where the failing step's batch lives (not a user's ``batch, dim = x.shape``)
    str(Path("gradoctor", "training", "step.py")),  # TrainStep._micro_batches: loop and profiler
)


def _frame_local(
    exc: BaseException, name: str, kind: type, only: tuple[str, ...] | None = None
) -> Any:
    for frame, _ in reversed(_frames(exc)):
        if only is not None and not frame.f_code.co_filename.endswith(only):
            continue
        value = frame.f_locals.get(name)
        if value is not None and isinstance(value, kind) and not isinstance(value, bool):
            return value
    return None


def _parse_size(text: str, pattern: str) -> int | None:
    match = re.search(pattern, text)
    if not match:
        return None
    number, _, unit = match.group(1).partition(" ")
    return int(float(number) * _UNITS.get(unit, 1))


def _commands(
    changes: list[str],
    recipe: Recipe,
    env: list[str] | None = None,
    launch: list[str] | None = None,
) -> list[str]:
    """The fix's command lines: the run again with ``changes`` (``key.sub=value`` overrides)
    as a command that works as printed (``env`` before it, the run's ``launch`` options such
    as ``--resume`` after it), and the command that measures a plan for this very recipe (its
    file and overrides; on CUDA the budget defaults to the device's free memory). A recipe
    without a file gets its overrides and the Python call instead."""
    if recipe.source is None:
        rerun = ["rerun with the overrides " + _command(changes)] if changes else []
        return [*rerun, "measure a plan: gradoctor.memory_profile(recipe)"]
    base = [recipe.source, *recipe.overrides]
    commands = []
    if changes or env:
        again = [*(env or []), "gradoctor", "train", *base, *changes, *(launch or [])]
        commands.append("rerun with " + _command(again))
    commands.append("measure a plan: " + _command(["gradoctor", "memory-profile", *base]))
    return commands


def _command(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _entry(
    modules: list[str],
    step: int | None,
    message: str,
    evidence: dict[str, Any],
    notes: list[str],
    commands: list[str] | None = None,
) -> dict[str, Any]:
    """The ``memory`` diagnosis as a report entry: its ``fix`` is ``notes`` then
    ``commands``, and ``commands`` is a key of its own when there are some."""
    return Diagnosis(
        code="memory",
        severity="error",
        message=message,
        fix=fix_text(notes, commands or []),
        modules=modules,
        steps=[step] if step is not None else [],
        evidence=evidence,
        commands=list(commands or []),
    ).to_dict()


def _generic(
    model: torch.nn.Module,
    recipe: Recipe,
    exc: BaseException,
    step: int | None,
    why: str,
    evidence: dict[str, Any] | None = None,
    launch: list[str] | None = None,
) -> dict[str, Any]:
    """The fallback: halve the batch, bf16, and checkpoint the most repeated block class."""
    try:
        evidence = dict(evidence or {}, fallback=why)
        blocks = _repeated_block(model)
        size = recipe.data.kwargs.get("batch_size")
        changes = [f"train.checkpoint={summary.yaml_list([blocks])}"] if blocks else []
        notes = []
        if isinstance(size, int) and size > 1:
            changes.append(f"data.batch_size={size // 2}")
        elif not isinstance(size, int):
            notes.append("use a smaller batch")
        if recipe.precision == "fp32":
            changes.append("precision=bf16")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f" at step {step}" if step is not None else ""
        return _entry(
            [blocks] if blocks else [],
            step,
            f"out of memory{where}: {first}",
            evidence,
            notes,
            _commands(changes, recipe, launch=launch),
        )
    except Exception:
        return _entry(
            [],
            step if isinstance(step, int) else None,
            "out of memory",
            {"fallback": why},
            [
                "lower data.batch_size, use precision: bf16, or checkpoint activations "
                "(train.checkpoint)"
            ],
        )


def _repeated_block(model: torch.nn.Module) -> str | None:
    """The class with the most instances (at least two) among modules that have children."""
    kinds = Counter(
        type(m).__name__ for _, m in model.named_modules() if next(m.children(), None) is not None
    )
    kinds.pop(type(model).__name__, None)
    for generic in ("Sequential", "ModuleList", "ModuleDict"):
        kinds.pop(generic, None)
    best = kinds.most_common(1)
    return best[0][0] if best and best[0][1] >= 2 else None
