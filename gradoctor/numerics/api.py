"""``gradoctor audit``: the silent numerical problems of a recipe's training steps, before
anything goes non-finite.

``audit(recipe)`` builds the run state as ``train`` does (``build_state``: the recipe's
model, data, loss, optimizer, precision, accumulation and checkpointing, seeded) and runs its
first N optimizer steps (default 2) through the one training step (``TrainStep``) with the
pattern detector attached (``patterns.PatternDetector``: the unstable patterns and the
ranges, graded in the op's dtype and in the target precision). Before each audited step the
precision audit (``precision.PrecisionAudit``) measures its first micro-batch at the current
weights — fp32 against the target precision (the recipe's, or ``precision=``), per module,
local and inherited — with the RNG and the buffers put back, so the step then trains on
exactly what it would have. The keep-in-fp32 list is proposed and verified on the first
audited step's batch; the module table keeps, per module, the worst SQNR over the steps.

Cost: the audited steps with the detector (``bench/audit_cost.py``), plus per audited step
two forward+backward passes and one forward per measured module, plus up to
``max_verify`` forward+backward passes once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from gradoctor.devices import pick_device
from gradoctor.errors import GradoctorError, UsageError
from gradoctor.numerics.findings import ranked
from gradoctor.numerics.patterns import PatternDetector
from gradoctor.numerics.precision import DTYPES, PrecisionAudit, PrecisionOptions, PrecisionReport
from gradoctor.numerics.result import AuditResult
from gradoctor.recipe import Recipe, command_options, load_command_recipe
from gradoctor.sinks.report_json import check_json_target, write_json_output
from gradoctor.training.batches import to_device
from gradoctor.training.build import build_state
from gradoctor.training.failures import user_error
from gradoctor.training.step import StepConfig, TrainStep


@dataclass(frozen=True)
class AuditOptions:
    """``steps``: optimizer steps to audit; ``precision``: the target (bf16 | fp16; default
    the recipe's own when it is not fp32); ``precision_audit``: run Part 2; the rest are the
    keep-list's knobs (``precision.PrecisionOptions``)."""

    steps: int = 2
    precision: str | None = None
    precision_audit: bool = True
    outlier_db: float = 10.0
    floor_db: float = 20.0
    loss_tolerance: float = 1e-3
    grad_tolerance_db: float = 20.0
    max_verify: int = 3


def audit(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    **options: Any,
) -> AuditResult:
    """``gradoctor audit``'s API (module docstring): ``recipe`` (default ``./recipe.yaml``)
    with ``overrides``; ``options`` are ``AuditOptions`` fields (``steps=``,
    ``precision=``...); ``json_path`` also writes ``to_dict()`` there (checked first).
    Silent. Raises UsageError, RecipeError, UserCodeError."""
    if json_path is not None:
        check_json_target(Path(json_path))
    opts = command_options(AuditOptions, options, "audit")
    if not isinstance(opts.steps, int) or opts.steps < 1:
        raise UsageError(f"--steps must be a whole number >= 1, got {opts.steps!r}")
    if opts.precision is not None and opts.precision not in DTYPES:
        raise UsageError(
            f"--precision must be bf16 or fp16, got {opts.precision!r}",
            hint="the reference is always fp32; the target is what you train (or would) in",
        )
    loaded = load_command_recipe(recipe, overrides, "audit")
    result = recipe_audit(loaded, opts)
    if json_path is not None:
        write_json_output(Path(json_path), result.to_dict())
    return result


def _target(recipe: Recipe, opts: AuditOptions) -> str | None:
    if opts.precision is not None:
        return opts.precision
    return recipe.precision if recipe.precision in DTYPES else None


def _check_device_runs(target: str, device: torch.device) -> None:
    """A clear error when the device cannot run the target precision's autocast."""
    try:
        with torch.autocast(device.type, dtype=DTYPES[target]):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(
            f"--precision {target} cannot run on {device}: {exc}",
            hint="pick the other precision, or audit on a device that supports it",
        ) from None
    if target == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(
            f"this GPU does not support bf16 ({torch.cuda.get_device_name(device)})",
            hint="use --precision fp16",
        )


def recipe_audit(recipe: Recipe, opts: AuditOptions) -> AuditResult:
    """The audit of an already loaded recipe (module docstring)."""
    t0 = time.perf_counter()
    device = pick_device(recipe.train.device)
    target = _target(recipe, opts)
    notes: list[str] = []
    if target is not None:
        _check_device_runs(target, device)
    elif opts.precision_audit:
        notes.append(
            "the recipe trains in fp32: pass --precision bf16|fp16 to audit a lower "
            "precision (the patterns were graded in fp32)"
        )
    state, undo = build_state(recipe, device)
    config = StepConfig.from_recipe(recipe)
    pending: list[Any] = []  # the step's micro-batches, drawn before the precision audit

    def fetch() -> Any:
        return pending.pop(0) if pending else state.data.next()

    stepper = TrainStep(state, config, fetch=fetch)
    loss_scale = 2.0**16 if target == "fp16" and recipe.precision != "fp16" else None
    detector = PatternDetector(
        state.model,
        target=DTYPES[target] if target is not None else None,
        loss_scale=loss_scale,
    )
    reports: list[PrecisionReport] = []
    losses: list[float] = []
    try:
        for i in range(opts.steps):
            micro = [state.data.next() for _ in range(config.accum_steps)]
            pending.extend(micro)
            if target is not None and opts.precision_audit:
                po = PrecisionOptions(
                    target=target,
                    outlier_db=opts.outlier_db,
                    floor_db=opts.floor_db,
                    loss_tolerance=opts.loss_tolerance,
                    grad_tolerance_db=opts.grad_tolerance_db,
                    max_verify=opts.max_verify if i == 0 else 0,
                )
                try:
                    reports.append(
                        PrecisionAudit(state.model, state.loss_fn, device, po).run(
                            to_device(micro[0], device)
                        )
                    )
                except GradoctorError:
                    raise
                except Exception as exc:
                    raise user_error(exc, state.step + 1, recipe) from exc
            try:
                outcome = stepper.run([detector])
            except GradoctorError:
                raise
            except Exception as exc:
                raise user_error(exc, state.step + 1, recipe) from exc
            losses.append(float(outcome.loss))
    finally:
        detector.close()
        stepper.close()
        undo()
    if detector.ops_seen == 0:
        raise UsageError(
            "the audited steps ran no floating-point tensor ops in the forward (no tensor ops): nothing to audit",
            hint="check that the model's forward computes with tensors",
        )
    precision = _worst(reports) if reports else None
    return AuditResult(
        findings=ranked(list(detector.findings.values())),
        precision=precision,
        steps=opts.steps,
        recipe={
            "name": recipe.name,
            "source": recipe.source,
            "precision": recipe.precision,
            "target": target,
            "device": str(device),
        },
        losses=losses,
        ops=detector.ops_seen,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )


def _worst(reports: list[PrecisionReport]) -> PrecisionReport:
    """The first step's report (its loss drift, gradient SQNR, keep-list and verification),
    with each module's SQNRs the worst over the audited steps."""
    first = reports[0]
    for later in reports[1:]:
        by_name = {m.name: m for m in later.modules}
        for row in first.modules:
            other = by_name.get(row.name)
            if other is None:
                continue
            for f in fields(row):
                if f.name.endswith("_db"):
                    a, b = getattr(row, f.name), getattr(other, f.name)
                    if b is not None and (a is None or b < a):
                        setattr(row, f.name, b)
    return first


__all__ = ["AuditOptions", "audit", "recipe_audit"]
