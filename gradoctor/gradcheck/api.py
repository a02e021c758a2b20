"""The gradient checker's Python API: ``check_grads``, ``assert_grads_correct``, ``check_file``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradoctor.errors import UsageError
from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.checks import (
    batch_independence,
    contexts,
    double_backward,
    first_order,
    kinks_random,
    metadata,
    precision,
    ranges,
)
from gradoctor.gradcheck.checks.common import CheckContext
from gradoctor.gradcheck.discovery import discover
from gradoctor.gradcheck.result import FAIL, CaseResult, CheckResult, GradCheckReport
from gradoctor.gradcheck.target import Target
from gradoctor.recipe.components import user_frames
from gradoctor.sinks.report_json import check_json_target, write_json_output

CHECKS: list[Callable[[CheckContext], list[CheckResult]]] = [
    first_order.run,
    double_backward.run,
    contexts.run,
    batch_independence.run,
    ranges.run,
    precision.run,
    kinks_random.run,
    metadata.run,
]


class GradCheckFailed(AssertionError):
    """Raised by :func:`assert_grads_correct`; ``result`` is the CaseResult."""

    def __init__(self, result: CaseResult):
        super().__init__(result.failure_text())
        self.result = result


def default_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def run_case(case: Case, *, seed: int = 0, fast: bool = False) -> CaseResult:
    """Every check on one case. Cost: see each check; the float64 Jacobian dominates.
    Raises UsageError for a case with nothing to differentiate (no float input or parameter,
    or no float output): its checks could only pass vacuously."""
    start = time.perf_counter()
    try:
        target = Target(case, seed=seed)
        target.random = kinks_random.is_random(target, seed)
    except Exception as exc:  # the user's forward raised at the example inputs
        frames = user_frames(exc).rstrip()
        check = CheckResult("forward", FAIL, f"raised {type(exc).__name__}: {exc}", notes=[frames])
        return CaseResult(case.name, [check], time.perf_counter() - start)
    if not target.slots:
        raise UsageError(
            f"case '{case.name}' has no floating-point input or parameter: there is no gradient "
            "to check, and every check would pass without proving anything",
            hint="give the case float tensors as inputs (e.g. torch.randn(4, 3)); integer "
            "inputs are not differentiated",
        )
    ctx = CheckContext(
        case, target, seed=seed, n_probes=1 if fast else 2, fast=fast, devices=default_devices()
    )
    if ctx.flat().m == 0:
        raise UsageError(
            f"case '{case.name}' returns no floating-point tensor (a Python number, integers, "
            "nothing): there is no gradient to check",
            hint="return the tensor output(s) whose gradients should be checked",
        )
    _check_surrogate(ctx)
    results: list[CheckResult] = []
    for check in CHECKS:
        results += check(ctx)
    return CaseResult(case.name, results, time.perf_counter() - start)


def _check_surrogate(ctx: CheckContext) -> None:
    """A declared surrogate must return the forward's floating outputs' shapes (one call);
    otherwise its differences cannot stand in for the forward's. Raises UsageError."""
    case, target = ctx.case, ctx.target
    if case.surrogate is None:
        return
    if not callable(case.surrogate):
        raise UsageError(
            f"case '{case.name}': surrogate is a {type(case.surrogate).__name__}, not callable",
            hint="pass the function whose derivative the backward computes, e.g. F.hardtanh",
        )
    try:
        with torch.no_grad(), target.rng():
            outs = target.call(target.values, surrogate=True)
    except Exception as exc:
        frames = user_frames(exc).rstrip()
        call = "surrogate(module, *inputs)" if target.module is not None else "surrogate(*inputs)"
        raise UsageError(
            f"case '{case.name}': {call} raised {type(exc).__name__}: {exc}\n{frames}",
            hint="the surrogate is called like the case's forward (a Module's gets the module "
            "first) and returns outputs of the same shapes",
        ) from exc
    want = [tuple(s) for s in target.output_shapes]
    got = [tuple(t.shape) for t in outs]
    if got != want:
        raise UsageError(
            f"case '{case.name}': the surrogate returns floating outputs of shapes {got}, "
            f"the forward {want}",
            hint="return the same outputs as the forward (the function whose derivative the "
            "backward computes)",
        )


def check_grads(
    fn_or_module: Any,
    inputs: Any = None,
    *,
    name: str | None = None,
    kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    fast: bool = False,
    **case_options: Any,
) -> CaseResult:
    """Check the gradients of a function, ``autograd.Function`` class or ``nn.Module``.

    ``inputs`` is a tuple of positional arguments (a single tensor is accepted);
    ``case_options`` are :class:`Case` fields (``batched``, ``batch_mixing``, ``atol`` ...;
    ``surrogate=fn`` for a straight-through estimator: finite differences of ``fn``, called
    like the case, stand in for the forward's).
    A :class:`Case` may be passed instead of ``fn_or_module``. Returns the CaseResult the
    CLI reports; ``.passed`` tells the outcome. The objects passed are not modified.
    """
    if isinstance(fn_or_module, Case):
        case = fn_or_module
    else:
        if inputs is None:
            from gradoctor.errors import UsageError

            raise UsageError("check_grads needs inputs", hint="check_grads(fn, (x, w))")
        label = name or getattr(fn_or_module, "__name__", type(fn_or_module).__name__)
        case = Case(label, fn_or_module, inputs, kwargs or {}, **case_options)
    return run_case(case, seed=seed, fast=fast)


def assert_grads_correct(fn_or_module: Any, inputs: Any = None, **options: Any) -> CaseResult:
    """Like :func:`check_grads`, raising :class:`GradCheckFailed` (an AssertionError) with
    the located message when any check fails."""
    result = check_grads(fn_or_module, inputs, **options)
    if not result.passed:
        raise GradCheckFailed(result)
    return result


def check_file(
    path: str | Path,
    *,
    cases: list[str] | None = None,
    seed: int = 0,
    fast: bool = False,
    json_path: str | Path | None = None,
) -> GradCheckReport:
    """Discover the cases of a layer file and check each; with ``json_path``, also write
    ``report.to_dict()`` there (the path is checked before anything runs). Raises UsageError
    (exit 2) for a missing file, an import error, no cases, an unknown case name or a
    ``json_path`` that cannot be written."""
    if json_path is not None:
        check_json_target(Path(json_path))
    found = discover(path, seed=seed, names=cases)
    report = GradCheckReport([run_case(c, seed=seed, fast=fast) for c in found], source=str(path))
    if json_path is not None:
        write_json_output(Path(json_path), report.to_dict())
    return report
