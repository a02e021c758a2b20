"""Turn tracked steps into the report's pieces: the breakdown at the peak, when the peak
happens, the per-module table, and recipe-ready checkpoint names."""

from __future__ import annotations

import json
import shlex
from collections import Counter

import torch
import yaml

from gradoctor.memory.model import ModuleStats
from gradoctor.memory.result import Category, ModuleMemory, PeakInfo
from gradoctor.memory.tracking import StepTrace
from gradoctor.recipe.load import safe_load
from gradoctor.recipe.schema import Recipe

CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "autocast_weights",
    "temporaries",
    "rest",
)
_KIND_TO_CATEGORY = {
    "gradient": "gradients",
    "optimizer_state": "optimizer_state",
    "activation": "activations",
    "autocast_weight": "autocast_weights",
    "temporary": "temporaries",
    "batch": "rest",
}


def breakdown(trace: StepTrace, residual: int = 0) -> tuple[int, list[Category]]:
    """The peak (tracked bytes + ``residual``, the CUDA bytes no tensor accounts for) and what is
    alive then, by category. ``rest`` is the batch plus the residual."""
    tracked, i = trace.peak()
    sizes = Counter(
        {
            "parameters": trace.static["parameters"],
            "gradients": trace.static["gradients"],
            "optimizer_state": trace.static["optimizer_state"],
            "rest": trace.static["batch"] + max(residual, 0),
        }
    )
    for r in trace.alive_at(i) if i >= 0 else []:
        sizes[_KIND_TO_CATEGORY.get(r.kind, "temporaries")] += r.nbytes
    for r in trace.records:  # storages from before the step, freed by the peak
        if r.op == "static" and r.free is not None and r.free <= i:
            sizes["rest" if r.kind == "batch" else r.kind] -= r.nbytes
    peak = tracked + max(residual, 0)
    return peak, [Category(n, int(sizes[n]), sizes[n] / peak if peak else 0.0) for n in CATEGORIES]


def peak_info(trace: StepTrace, step: str, residual: int = 0, top: int = 5) -> PeakInfo:
    """When the step's peak happens (phase, micro-batch, module) and its largest live storages."""
    peak, i = trace.peak()
    if i < 0:
        return PeakInfo(step, peak + residual, "forward", 0, None)
    module = None
    if trace.event_phase[i] == "forward":
        inside = [c for c in trace.calls if c.phase == "forward" and c.enter <= i < c.exit]
        module = inside[-1].qname if inside else None
    alive = sorted(trace.alive_at(i), key=lambda r: -r.nbytes)[:top]
    return PeakInfo(
        step=step,
        bytes=peak + residual,
        phase=trace.event_phase[i],
        micro_batch=trace.event_micro[i],
        module=module,
        alive=[
            {
                "bytes": r.nbytes,
                "kind": r.kind,
                "created_in": trace.calls[r.stack[-1]].qname if r.stack else r.phase,
                "op": r.op,
            }
            for r in alive
        ],
    )


def module_table(
    stats: list[ModuleStats],
    flops: dict[str, int],
    seconds: dict[str, float],
    forward_seconds: float,
) -> list[ModuleMemory]:
    return [
        ModuleMemory(
            name=s.qname,
            type=s.kind,
            saved=s.saved,
            saved_total=s.saved_total,
            checkpoint_saves=s.drop,
            recompute_spike=s.spike,
            recompute_flops=int(flops.get(s.qname, 0)),
            forward_time_share=seconds.get(s.qname, 0.0) / forward_seconds
            if forward_seconds > 0
            else 0.0,
            calls=s.calls,
        )
        for s in stats
    ]


def recipe_names(model: torch.nn.Module, qnames: list[str]) -> list[str]:
    """``train.checkpoint`` entries for ``qnames``: a class name replaces its instances when every
    instance of that class (at least two) is chosen, since the recipe matches class names too."""
    chosen = set(qnames)
    by_class: dict[str, list[str]] = {}
    all_names = {q for q, _ in model.named_modules()}
    for qname, module in model.named_modules():
        by_class.setdefault(type(module).__name__, []).append(qname)
    out: list[str] = []
    covered: set[str] = set()
    for q in qnames:
        if q in covered:
            continue
        kind = type(model.get_submodule(q)).__name__
        members = by_class.get(kind, [])
        if len(members) >= 2 and set(members) <= chosen and kind not in all_names:
            out.append(kind)
            covered |= set(members)
        else:
            out.append(q)
            covered.add(q)
    return out


def yaml_list(names: list[str]) -> str:
    """``[a, b]`` as YAML reads back the same strings: a name YAML would read as something else
    (``0`` of a top-level Sequential, ``1.10``, ``on``, ``null``) is quoted."""
    return "[" + ", ".join(_yaml_str(n) for n in names) + "]"


def _yaml_str(name: str) -> str:
    try:
        same = safe_load(f"[{name}]") == [name]  # as the recipe loader reads it (1e3 a number)
    except yaml.YAMLError:
        same = False
    return name if same else json.dumps(name)


def recipe_lines(names: list[str], recipe: Recipe | None = None) -> str:
    """YAML to paste under a recipe, and the equivalent run as a command that works as printed
    (the recipe's own file and overrides, when it came from a file)."""
    listed = yaml_list(names)
    override = f"train.checkpoint={listed}"
    if recipe is not None and recipe.source is not None:
        words = ["gradoctor", "train", recipe.source, *recipe.overrides, override]
        run = " ".join(shlex.quote(w) for w in words)
    else:
        run = f"gradoctor train RECIPE {shlex.quote(override)}"
    return f"train:\n  checkpoint: {listed}\n# or: {run}"
