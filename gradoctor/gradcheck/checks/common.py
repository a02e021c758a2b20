"""What every check shares: the run context, and turning comparisons into results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gradoctor.gradcheck.autograd_graph import graph_classes
from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.jacobian import Comparison, compare
from gradoctor.gradcheck.patterns import join, off_diagonal_batch, pattern_for
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import FlatFunction, Target, slot_label
from gradoctor.recipe.components import user_frames

TOP = 5  # mismatches kept per check


@dataclass
class CheckContext:
    """Shared by the checks of one case. ``target`` is the float64 CPU reference."""

    case: Case
    target: Target
    seed: int = 0
    n_probes: int = 2
    fast: bool = False
    devices: tuple[str, ...] = ("cpu",)
    first_order_ok: bool = True
    kinks: list[str] = field(default_factory=list)
    _flat: FlatFunction | None = field(default=None, repr=False)
    _classes: list[type] | None = field(default=None, repr=False)

    def flat(self) -> FlatFunction:
        """``FlatFunction(self.target)``, built once (one forward) and shared by the checks:
        it is never modified, and every evaluation through it is a fresh call."""
        if self._flat is None:
            self._flat = FlatFunction(self.target)
        return self._flat

    def function_classes(self) -> list[type]:
        """Custom autograd.Function classes in the graph of the reference's outputs at the
        example inputs (one forward, found once)."""
        if self._classes is None:
            self._classes = graph_classes(self.target, self.flat())
        return self._classes

    def derived(self, inputs) -> Target:
        """The same case on other inputs (resized, scaled), float64 CPU."""
        return Target(
            self.case,
            inputs=inputs,
            seed=self.seed,
            random=self.target.random,
            batch_positions=self.target.batched_positions(),
            copies=self.target.copies,
        )

    def compare(self, fn: FlatFunction, *, context: str, mode: str = "probes") -> Comparison:
        comp = compare(
            fn,
            atol=self.case.atol,
            rtol=self.case.rtol,
            mode=mode,
            n_probes=self.n_probes,
            seed=self.seed,
            context=context,
        )
        self.kinks += comp.kinks
        return comp


def dedupe(mismatches: list[Mismatch]) -> list[Mismatch]:
    seen, out = set(), []
    for m in mismatches:
        key = (m.input, m.input_index, m.output, m.output_index, m.context)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def from_comparison(
    name: str,
    comp: Comparison,
    fn: FlatFunction,
    ctx: CheckContext,
    *,
    context_pattern: str | None = None,
    what: str = "",
) -> CheckResult:
    """A CheckResult for ``comp``; on failure names the pattern (2 forwards per element)."""
    mismatches = dedupe(comp.mismatches)
    if comp.mode == "non-finite":
        return CheckResult(name, NOTE, f"{what}: outputs not finite in float64; not checked")
    detail = {
        "full": f"full Jacobian {fn.m}x{fn.n}",
        "probes": f"{ctx.n_probes} probe(s), sensitivity {comp.sensitivity or 0:.2g}",
        "empty": "nothing to differentiate",
    }[comp.mode]
    if comp.kinks:
        detail += f", {len(comp.kinks)} kink(s)"
    if comp.ok:
        return CheckResult(name, PASS, join(what, detail) or "", max_rel_error=comp.max_rel_error)
    pattern = join(context_pattern, pattern_for(fn, mismatches, ctx.seed))
    target = getattr(fn, "target", None)
    if target is not None and target.batch_size() is not None:
        positions = set(target.batched_positions())
        batched = {
            slot_label(s) for s in target.slots if s.kind == "input" and s.position in positions
        }
        if off_diagonal_batch(mismatches, batched) and "off-diagonal" not in (pattern or ""):
            pattern = join(pattern, "only off-diagonal batch blocks wrong")
    return CheckResult(
        name,
        FAIL,
        join(what, comp.message or "analytic and numeric gradients disagree", detail) or "",
        max_rel_error=comp.max_rel_error,
        pattern=pattern,
        mismatches=mismatches[:TOP],
    )


def surrogate_note(ctx: CheckContext) -> str:
    """How a comparison's numeric side is described when the case declares a surrogate."""
    fn = ctx.case.surrogate
    if fn is None:
        return ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"numeric: differences of the surrogate {name}, not of the forward"


def guarded(name: str, body: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """Run a check; an exception from the user's code fails it with the user's frames."""
    try:
        return body()
    except Exception as exc:  # the user's forward/backward raised in this context
        frames = user_frames(exc).rstrip()
        return [CheckResult(name, FAIL, f"raised {type(exc).__name__}: {exc}", notes=[frames])]


def amax(t: torch.Tensor) -> float:
    """max |t|, 0.0 for an empty tensor."""
    return float(t.abs().max()) if t.numel() else 0.0


def empty(fn: FlatFunction) -> bool:
    """Nothing to differentiate: no input elements or no differentiable output elements."""
    return fn.n == 0 or fn.m == 0


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, every stride doubled (differentiable): non-contiguous when numel > 1."""
    if t.dim() == 0:
        return t
    return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]


def status_of(results: list[CheckResult]) -> str:
    if any(r.status == FAIL for r in results):
        return FAIL
    return NOTE if any(r.status == NOTE for r in results) else PASS
