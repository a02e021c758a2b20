"""``memory_profile``: measure a recipe's training steps, predict every what-if, plan, check.

Cost: one tracked warm-up step (optimizer state is created), ``steps`` tracked steady steps at
the recipe's batch size, one at a second batch size (half, or 2 for a batch of 1), two at the
other precision class (fp32 vs autocast), one plain step timing each module's forward and a
no-grad forward under ``FlopCounterMode`` -- about five steps -- then one step per self-checked
configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradoctor.errors import OutOfMemory, UsageError, UserCodeError
from gradoctor.memory import planner, summary
from gradoctor.memory.measure import Config, ProfileSession, StepMeasurement
from gradoctor.memory.model import (
    PeakModel,
    fit_peak_model,
    module_stats,
    natural_frees,
    paired,
    replay,
)
from gradoctor.memory.result import CheckpointPlan, MemoryProfile, SelfCheck, WhatIf
from gradoctor.memory.tracking import StepTrace, optimizer_tensors, unique_bytes
from gradoctor.memory.units import format_bytes, parse_batch_sizes, parse_bytes
from gradoctor.recipe import Recipe, load_command_recipe
from gradoctor.sinks.report_json import check_json_target, write_json_output
from gradoctor.training.activation_checkpointing import checkpoint_targets

PRECISIONS = ("fp32", "bf16", "fp16")
# the self-check's tolerance, |predicted - measured| / measured in percent: on CPU predicted and
# measured are the same tracked bytes (exact but for a bias gradient's bytes); on CUDA the
# allocator adds workspaces and rounding that the tracked curve only estimates
TOLERANCE_PCT = {"cpu": 1.0, "cuda": 5.0}
_HALF = {"bf16": "fp16", "fp16": "bf16"}


@dataclass
class Measurements:
    """The tracked steps the predictions are built from (by precision, then batch size)."""

    batch_size: int
    first: StepMeasurement
    traces: dict[str, dict[int, StepTrace]] = field(default_factory=dict)
    residuals: dict[str, dict[int, int]] = field(default_factory=dict)  # for predictions
    unowned: dict[str, dict[int, int]] = field(default_factory=dict)  # measured - tracked peak
    timing: StepMeasurement | None = None
    flops: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    notes: list[str] = field(default_factory=list)


class Predictor:
    """Predicted steady-state peak of (precision, checkpoint names, batch size).

    fp16 and bf16 share one measurement when only one of them was measured: autocast casts the
    same ops to either 16-bit type, and the fp16 loss scaler's tensors are a few bytes."""

    def __init__(self, m: Measurements, model: torch.nn.Module | None = None):
        self.m = m
        self.net = model  # resolves recipe-style names to the modules the loop would wrap
        self._models: dict[tuple[str, tuple[str, ...]], PeakModel] = {}

    def targets(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """The qualified names the loop wraps for recipe-style ``names``."""
        if self.net is not None and names:
            return checkpoint_targets(self.net, list(names))[0]
        return list(names)

    def source(self, precision: str) -> str | None:
        if precision in self.m.traces:
            return precision
        proxy = _HALF.get(precision)
        return proxy if proxy in self.m.traces else None

    def model(self, precision: str, names: list[str] | tuple[str, ...]) -> PeakModel | None:
        src = self.source(precision)
        if src is None:
            return None
        names = self.targets(names)
        key = (src, tuple(names))
        if key not in self._models:
            self._models[key] = fit_peak_model(
                self.m.traces[src], names, self.m.residuals.get(src) or None
            )
        return self._models[key]

    def __call__(
        self, precision: str, names: list[str] | tuple[str, ...], batch: int
    ) -> int | None:
        model = self.model(precision, names)
        return model(batch) if model is not None else None


def memory_profile(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    batch_sizes: str | list[int] | None = None,
    budget: str | int | None = None,
    steps: int = 1,
    check: bool = True,
    snapshot: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    json_path: str | Path | None = None,
) -> MemoryProfile:
    """Profile where a recipe's training memory goes and what would make it fit.

    ``recipe`` defaults to ``./recipe.yaml``. ``batch_sizes`` (``"8,16,32"``) are the what-if
    micro-batch sizes (default: half, 1x and 2x the recipe's); ``budget`` (``"10GiB"``) is the
    memory to plan for (default: the device's free memory on CUDA, none on CPU); ``steps`` steady
    steps are measured at the recipe's configuration; ``check`` runs one real step per what-if
    configuration to compare predicted with measured peaks; ``snapshot`` (CUDA only) writes a
    ``torch.cuda.memory`` snapshot of one step for https://pytorch.org/memory_viz; ``json_path``
    also writes the profile as JSON (checked before anything runs); ``overrides`` are recipe
    overrides (``["train.steps=5"]`` or a mapping).

    Silent. Raises UsageError (bad arguments), RecipeError, UserCodeError, OutOfMemory (the
    recipe does not run even at batch size 1 on the device).
    """
    if json_path is not None:
        check_json_target(Path(json_path))
    budget_bytes = parse_bytes(budget) if budget is not None else None
    sizes = parse_batch_sizes(batch_sizes)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps must be an integer >= 1, got {steps!r}")
    loaded = load_command_recipe(recipe, overrides, "memory-profile")
    session = ProfileSession(loaded)
    if snapshot is not None and not session.cuda:
        raise UsageError(
            f"--snapshot needs a CUDA device; this recipe runs on {session.device}",
            hint="drop --snapshot, or run on a machine with a GPU",
        )
    t0 = time.perf_counter()
    m = measure(session, steps)
    profile_seconds = time.perf_counter() - t0
    if snapshot is not None:
        session.snapshot(Config(loaded.precision, (), m.batch_size), str(snapshot))
    profile = analyse(session, m, sizes, budget_bytes, check, profile_seconds, snapshot)
    if json_path is not None:
        write_json(profile, json_path)
    return profile


def write_json(profile: MemoryProfile, path: str | Path) -> None:
    """``profile.to_dict()`` as JSON at ``path`` (parent folders created). Raises UsageError."""
    write_json_output(Path(path), profile.to_dict())


# ---- measuring ---------------------------------------------------------------------------
def measure(session: ProfileSession, steps: int) -> Measurements:
    """Run the profile's steps (module docstring); the batch is halved on a device OOM."""
    precision, batch = session.recipe.precision, session.recipe_batch_size
    while True:
        try:
            first = session.step(Config(precision, (), batch), track=True)
            break
        except torch.OutOfMemoryError:
            _release(session)
            if batch == 1 or not session.can_resize(batch // 2):
                raise OutOfMemory(
                    f"one training step at batch size {batch} does not fit the device",
                    hint="use precision: bf16, checkpoint activations, or a smaller model",
                ) from None
            batch //= 2
            session.profiled_batch_size = batch
    m = Measurements(batch, first, steps=1)
    if batch != session.recipe_batch_size:
        m.notes.append(
            f"the recipe's batch size {session.recipe_batch_size} ran out of device memory; "
            f"profiled at {batch}"
        )
    other = batch // 2 if batch >= 2 else 2
    scalable = session.can_resize(other)
    if not scalable:
        m.notes.append(
            "the data component does not take a batch_size keyword (or ignores it): measured "
            f"at batch size {batch} only, so no batch-size scaling is predicted"
        )
    alt = "bf16" if precision == "fp32" else "fp32"
    for prec, n in ((precision, steps), (alt, 1)):
        try:
            for size in [batch, other] if scalable else [batch]:
                _tracked(session, m, Config(prec, (), size), n if size == batch else 1)
            got = m.traces.get(prec, {})
            if scalable and batch == 1 and not paired(got[1], got[2]) and session.can_resize(3):
                _tracked(session, m, Config(prec, (), 3), 1)  # batches 2 and 3 pair up
        except torch.OutOfMemoryError:
            _release(session)
            m.traces.pop(prec, None)
            m.notes.append(f"{prec} ran out of device memory: its what-ifs are not predicted")
        except UserCodeError as exc:
            if prec == precision:
                raise
            m.traces.pop(prec, None)
            m.notes.append(f"{prec} could not run here ({exc.message.splitlines()[0]})")
    m.timing = session.step(Config(precision, (), batch), time_modules=True)
    m.steps += 1
    _remeasure_stale(session, m)  # after every real step of the profile, the timing one too
    _forward_passes(session, m)
    return m


def _forward_passes(session: ProfileSession, m: Measurements) -> None:
    """One no-grad forward per measured precision: the forward FLOPs (recipe's precision) and
    how long each tensor lives when autograd keeps none (``model.natural_frees``), which is
    how a checkpointed module's forward frees what it would have saved."""
    for prec, by_size in m.traces.items():
        want_flops = prec == session.recipe.precision
        try:
            flops, nograd = session.forward_pass(Config(prec, (), m.batch_size), want_flops)
        except Exception as exc:  # best effort: FLOPs, then lifetimes alone
            if want_flops:
                m.notes.append(
                    f"FLOP counting failed ({type(exc).__name__}: {exc}); costs use time"
                )
            try:
                flops, nograd = session.forward_pass(Config(prec, (), m.batch_size), False)
            except Exception:
                continue
        if want_flops:
            m.flops = flops
        for trace in by_size.values():
            trace.natural_free = natural_frees(trace, nograd)


def _tracked(session: ProfileSession, m: Measurements, config: Config, n: int) -> None:
    """Track ``n`` steps of ``config``; the one with the highest tracked peak replaces any
    earlier measurement of ``config``."""
    best: StepMeasurement | None = None
    for _ in range(n):
        step = session.step(config, track=True)
        m.steps += 1
        if best is None or step.trace.peak()[0] > best.trace.peak()[0]:
            best = step
    m.traces.setdefault(config.precision, {})[config.batch_size] = best.trace
    if best.cuda_peak is not None:  # bytes no tensor or op peak accounts for (pre-existing)
        residual = best.cuda_peak - replay(best.trace).peak
        m.residuals.setdefault(config.precision, {})[config.batch_size] = residual
        unowned = best.cuda_peak - best.trace.peak()[0]
        m.unowned.setdefault(config.precision, {})[config.batch_size] = unowned


def _remeasure_stale(session: ProfileSession, m: Measurements) -> None:
    """Measure again, once, every step that began before the optimizer's state was complete.

    A prediction is a steady-state peak, so each trace must start with the optimizer state a
    long run has. A step that creates state (the first *applied* step: a skipped fp16 step, or an
    optimizer that creates state late, creates none) would otherwise under-predict by the state's
    bytes at its batch size and bend the batch-size fit. Costs nothing when the state is complete
    after the warm-up step, the usual case."""
    steady = _state_bytes(session)
    stale = [
        (prec, size)
        for prec, by_size in m.traces.items()
        for size, trace in by_size.items()
        if trace.static["optimizer_state"] != steady
    ]
    for prec, size in stale:
        _tracked(session, m, Config(prec, (), size), 1)
    now = _state_bytes(session)
    if stale and any(
        t.static["optimizer_state"] != now
        for by_size in m.traces.values()
        for t in by_size.values()
    ):
        m.notes.append(
            "the optimizer's state kept changing size across the profiled steps: predictions "
            "use the last measured steps and may be off by the state still to be created"
        )


def _state_bytes(session: ProfileSession) -> int:
    return unique_bytes(optimizer_tensors(session.optimizer), session.device.type)[0]


def _release(session: ProfileSession) -> None:
    session.optimizer.zero_grad(set_to_none=True)
    if session.cuda:
        torch.cuda.empty_cache()


# ---- analysing ---------------------------------------------------------------------------
def analyse(
    session: ProfileSession,
    m: Measurements,
    sizes: list[int] | None,
    budget: int | None,
    check: bool,
    profile_seconds: float,
    snapshot: str | Path | None = None,
) -> MemoryProfile:
    recipe, precision, b0 = session.recipe, session.recipe.precision, m.batch_size
    predict = Predictor(m, session.model)
    steady = m.traces[precision][b0]
    residual = m.unowned.get(precision, {}).get(b0, 0)  # CUDA: measured peak - tracked peak
    peak, categories = summary.breakdown(steady, residual)
    timing = m.timing
    modules = summary.module_table(
        module_stats(steady), m.flops, timing.module_seconds, timing.forward_seconds
    )
    order = [q for q, _ in session.model.named_modules()]
    modules.sort(key=lambda x: order.index(x.name) if x.name in order else len(order))
    scalable = len(m.traces[precision]) > 1
    device_budget = _device_budget(session)
    plan = make_plan(session, m, predict, modules, budget, device_budget, scalable)
    batches = (sizes or sorted({max(1, b0 // 2), b0, 2 * b0})) if scalable else [b0]
    if sizes and not scalable:
        m.notes.append(f"--batch-sizes ignored: only batch size {b0} can be measured")
    rows = what_if(recipe, m, predict, plan, batches, plan.budget)
    check_seconds = 0.0
    checks: list[SelfCheck] = []
    if check:
        t0 = time.perf_counter()
        state_before = _state_bytes(session)
        checks = self_check(session, rows, device_budget)
        check_seconds = time.perf_counter() - t0
        if _state_bytes(session) != state_before:
            m.notes.append(
                "the optimizer created more state during the self-check steps than in the "
                "profiled ones: predictions are low by about "
                f"{format_bytes(_state_bytes(session) - state_before)}; profile again "
                "after a few training steps (e.g. from a checkpoint)"
            )
    step_s = timing.seconds or 1e-9
    return MemoryProfile(
        recipe=str(recipe.name),
        device=str(session.device),
        method="cuda_allocator" if session.cuda else "tracked_tensors",
        precision=precision,
        batch_size=b0,
        accum_steps=recipe.train.accum_steps,
        batch_sizes_measured=sorted(m.traces[precision]),
        peak=peak,
        breakdown=categories,
        first_step=summary.peak_info(
            m.first.trace, "first", _residual_of(m.first) if session.cuda else 0
        ),
        steady=summary.peak_info(steady, "steady", residual),
        modules=modules,
        what_if=rows,
        plan=plan,
        checks=checks,
        cost={
            "profile_seconds": profile_seconds,
            "profile_steps": float(m.steps),
            "profile_step_equivalents": profile_seconds / step_s,
            "step_seconds": timing.seconds,
            "check_steps": float(sum(c.measured is not None for c in checks)),
            "check_seconds": check_seconds,
            "check_step_equivalents": check_seconds / step_s,
        },
        notes=m.notes + _notes(predict, session),
        snapshot=str(snapshot) if snapshot is not None else None,
    )


def _residual_of(step: StepMeasurement) -> int:
    return (step.cuda_peak or 0) - step.trace.peak()[0] if step.trace is not None else 0


def _device_budget(session: ProfileSession) -> int | None:
    """CUDA: the memory torch can use (free + what its cache holds), less 5% for fragmentation."""
    if not session.cuda:
        return None
    free, total = torch.cuda.mem_get_info(session.device)
    return int(free + torch.cuda.memory_reserved(session.device) - 0.05 * total)


def make_plan(
    session: ProfileSession,
    m: Measurements,
    predict: Predictor,
    modules: list,
    budget: int | None,
    device_budget: int | None,
    scalable: bool,
) -> CheckpointPlan:
    precision, b0 = session.recipe.precision, m.batch_size
    total_flops = m.flops.get("", 0)
    cands = [
        planner.Candidate(
            x.name,
            x.checkpoint_saves,
            x.recompute_spike,
            float(max(x.recompute_flops, x.forward_time_share * total_flops))
            if total_flops
            else x.forward_time_share,
        )
        for x in modules
        if x.name and x.checkpoint_saves > 0
    ]
    order = [x.name for x in modules]

    def peak_of(names: list[str]) -> int:
        return predict(precision, names, b0)

    source = "--budget" if budget is not None else "device" if device_budget else "none"
    target = budget if budget is not None else device_budget
    if target is None:  # no budget: plan for half of what checkpointing could lower the peak
        lowest = planner.plan(cands, peak_of, 0, order).peak
        target = (peak_of([]) + lowest) // 2
    found = planner.plan(cands, peak_of, target, order)
    names = summary.recipe_names(session.model, found.modules) if found.modules else []
    flops = sum(x.recompute_flops for x in modules if x.name in set(found.modules))
    step_flops = 3 * total_flops  # forward + backward ~ 3x forward
    plan = CheckpointPlan(
        budget=target,
        budget_source=source,
        modules=found.modules,
        recipe_names=names,
        recipe_lines=summary.recipe_lines(names, session.recipe)
        if names
        else "train:\n  checkpoint: []",
        predicted_peak=found.peak,
        recompute_flops=int(flops),
        recompute_share=flops / step_flops if step_flops else 0.0,
        fits=found.fits,
        max_batch_size={},
    )
    if scalable and source != "none":
        for prec in PRECISIONS:
            off, on = predict.model(prec, []), predict.model(prec, found.modules)
            if off is not None:
                plan.max_batch_size[prec] = {
                    "off": off.max_batch(target),
                    "plan": on.max_batch(target),
                }
    none_fit = not plan.max_batch_size or all(not v["plan"] for v in plan.max_batch_size.values())
    if not found.fits and none_fit:
        plan.smallest = _smallest(predict, found.modules, 1 if scalable else b0)
    return plan


def _smallest(predict: Predictor, most: list[str], batch: int) -> dict[str, Any]:
    """The configuration with the lowest predicted peak (when nothing fits the budget)."""
    best: dict[str, Any] | None = None
    for prec in PRECISIONS:
        for names in ([], most):
            peak = predict(prec, names, batch)
            if peak is not None and (best is None or peak < best["predicted_peak"]):
                best = {
                    "precision": prec,
                    "checkpoint": list(names),
                    "batch_size": batch,
                    "predicted_peak": peak,
                }
    return best or {}


def what_if(
    recipe: Recipe,
    m: Measurements,
    predict: Predictor,
    plan: CheckpointPlan,
    batches: list[int],
    budget: int | None,
) -> list[WhatIf]:
    options: list[tuple[str, list[str]]] = [("off", [])]
    if recipe.train.checkpoint:
        options.append(("recipe", list(recipe.train.checkpoint)))
    same = predict.targets(plan.modules) == predict.targets(list(recipe.train.checkpoint))
    if plan.modules and not same:
        options.append(("plan", plan.modules))
    rows = []
    for prec in PRECISIONS:
        model_src = predict.source(prec)
        for label, names in options:
            model = predict.model(prec, names)
            if model is None:
                continue
            for b in batches:
                peak = model(b)
                rows.append(
                    WhatIf(
                        precision=prec,
                        checkpoint=label,
                        modules=names,
                        batch_size=b,
                        predicted_peak=peak,
                        peak_phase=model.phase_of_peak(b),
                        fits=None if budget is None else peak <= budget,
                        measured=model_src == prec and label == "off" and b in m.traces[prec],
                    )
                )
    return rows


def self_check(
    session: ProfileSession, rows: list[WhatIf], device_budget: int | None
) -> list[SelfCheck]:
    """Run one real step per what-if configuration; compare predicted and measured peaks."""
    checks = []
    tolerance = TOLERANCE_PCT["cuda" if session.cuda else "cpu"]
    for row in sorted(rows, key=lambda r: r.batch_size):  # one data component per batch size
        check = SelfCheck(
            row.precision,
            row.checkpoint,
            row.batch_size,
            row.predicted_peak,
            None,
            None,
            "ok",
            tolerance,
        )
        checks.append(check)
        if device_budget is not None and row.predicted_peak > device_budget:
            check.status = "skipped"
            continue
        if not session.can_resize(row.batch_size):
            check.status = "failed: the data component cannot make this batch size"
            continue
        config = Config(row.precision, tuple(row.modules), row.batch_size)
        try:
            # CPU: the tracked byte curve without saved-tensor hooks, which would change
            # tensor identity in a recomputation (``query is key`` in nn.MultiheadAttention)
            step = session.step(config, track=not session.cuda, saves=False)
        except torch.OutOfMemoryError:
            _release(session)
            check.status = "oom"
            continue
        except UserCodeError as exc:
            check.status = f"failed: {exc.message.splitlines()[0]}"
            continue
        check.measured = step.measured_peak
        if check.measured:
            check.error_pct = 100.0 * (check.predicted - check.measured) / check.measured
        check.status = check_status(check.error_pct, tolerance)
    return checks


def check_status(error_pct: float | None, tolerance_pct: float) -> str:
    """``ok`` when the prediction is within ``tolerance_pct`` of the measured peak (or nothing
    was measured to compare), else ``over_tolerance``."""
    if error_pct is None or abs(error_pct) <= tolerance_pct:
        return "ok"
    return "over_tolerance"


def _notes(predict: Predictor, session: ProfileSession) -> list[str]:
    notes = []
    for prec in PRECISIONS:
        src = predict.source(prec)
        if src is not None and src != prec:
            notes.append(f"{prec} is predicted from the {src} measurement (same autocast ops)")
    if not session.cuda:
        notes.append(
            "CPU has no peak-memory API: peaks are tracked tensor bytes (every storage created "
            "in the step, plus parameters, gradients and optimizer state), not process RSS"
        )
    return notes


__all__ = ["memory_profile", "format_bytes"]
