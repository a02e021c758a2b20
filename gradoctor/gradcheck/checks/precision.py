"""Check 6: forward and backward in float32 and bfloat16 (and on CUDA) against float64.

The reference is computed in float64 from the *same rounded* low-precision inputs and
parameters, so the reported error is the computation's, not the inputs' rounding. The
error (relative, in norm) is reported; a non-finite output or gradient in low precision
where the float64 value is finite and representable in that dtype is a stability failure
(the naive softmax kind), and the first op that produced it is named with its fix. Runs at
the example's scale and at x10, x100. Cost per (dtype, device, scale): two forwards and two
backwards.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.checks.common import CheckContext, guarded
from gradoctor.gradcheck.checks.ranges import scaled_inputs
from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CheckResult, Mismatch
from gradoctor.gradcheck.target import Target

NAME = "precision"
DTYPES = (torch.float32, torch.bfloat16)
SCALES = (1.0, 10.0, 100.0)
EXPECTED = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # larger errors are noted

FIXES = {
    "exp": "exp overflows: subtract the max first (x - x.amax(dim, keepdim=True)) or use "
    "torch.logsumexp / torch.softmax / F.log_softmax",
    "log": "log of an underflowed 0: use F.log_softmax, torch.log1p or torch.logsumexp",
    "div": "division by an underflowed or overflowed value: rescale, or add an epsilon",
    "pow": "an intermediate overflows: rescale before pow, or use a stable formula "
    "(torch.hypot, torch.linalg.vector_norm)",
    "mul": "an intermediate overflows: rescale, or compute this part in float32",
}


class _FirstNonFinite(TorchFunctionMode):
    """Records the first op whose output is non-finite while its inputs are finite."""

    def __init__(self):
        super().__init__()
        self.op: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.op is None and isinstance(out, torch.Tensor) and out.is_floating_point():
            if not bool(torch.isfinite(out).all()):
                ins = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
                if all(bool(torch.isfinite(a).all()) for a in ins):
                    self.op = getattr(func, "__name__", str(func))
        return out


def _fix_for(op: str | None) -> str:
    if op is None:
        return "compute in a stable form, or keep this part in float32"
    base = op.strip("_").replace("true_divide", "div").replace("divide", "div")
    for key, fix in FIXES.items():
        if key in base:
            return fix
    return "compute in a stable form, or keep this part in float32"


def run(ctx: CheckContext) -> list[CheckResult]:
    return guarded(NAME, lambda: [_check(ctx)])


def _lowered(case: Case, inputs, dtype) -> tuple:
    return tuple(
        a.detach().to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in inputs
    )


def _run_once(target: Target, v_seed: int, watch: bool = False):
    """Outputs and J^T v (v standard normal, seeded) as float64 CPU lists; op if watched."""
    vals = [t.detach().clone().requires_grad_(True) for t in target.values]
    mode = _FirstNonFinite() if watch else None
    with torch.enable_grad(), target.rng():
        if mode is not None:
            with mode:
                outs = target.call(vals)
        else:
            outs = target.call(vals)
        gen = torch.Generator().manual_seed(v_seed)
        cots = [
            torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
            for o in outs
        ]
        diff = [(o, c) for o, c in zip(outs, cots) if o.requires_grad]
        grads = (
            torch.autograd.grad([o for o, _ in diff], vals, [c for _, c in diff], allow_unused=True)
            if diff
            else [None] * len(vals)
        )
    flat_out = [o.detach().double().cpu().reshape(-1) for o in outs]
    flat_grad = [
        (torch.zeros_like(v) if g is None else g).detach().double().cpu().reshape(-1)
        for g, v in zip(grads, vals)
    ]
    return flat_out, flat_grad, (mode.op if mode else None)


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if not a:
        return 0.0
    x, y = torch.cat(a), torch.cat(b)
    finite = torch.isfinite(x) & torch.isfinite(y)
    denom = float(y[finite].norm()) or 1.0
    return float((x[finite] - y[finite]).norm()) / denom


def _unstable(low: list[torch.Tensor], ref: list[torch.Tensor], dtype) -> int | None:
    """Index of the first low-precision non-finite whose reference is finite and in range."""
    if not low:
        return None
    x, y = torch.cat(low), torch.cat(ref)
    big = torch.finfo(dtype).max
    bad = ~torch.isfinite(x) & torch.isfinite(y) & (y.abs() < big)
    return int(torch.nonzero(bad)[0]) if bool(bad.any()) else None


def _check(ctx: CheckContext) -> CheckResult:
    case = ctx.case
    lines, notes, worst, failure = [], [], 0.0, None
    devices = [d for d in ctx.devices if d == "cpu" or torch.cuda.is_available()]
    for device in devices:
        for dtype in DTYPES:
            tag = f"{str(dtype).replace('torch.', '')} {device}"
            errs = []
            for scale in SCALES:
                inputs = _lowered(case, scaled_inputs(case, scale), dtype)
                try:
                    low = Target(
                        case,
                        dtype=dtype,
                        device=device,
                        inputs=inputs,
                        seed=ctx.seed,
                        random=ctx.target.random,
                        copies=ctx.target.copies,
                    )
                    low_out, low_grad, _ = _run_once(low, ctx.seed)
                except (RuntimeError, NotImplementedError, TypeError) as exc:
                    notes.append(f"{tag}: not supported ({type(exc).__name__}: {str(exc)[:120]})")
                    break
                ref = Target(
                    case,
                    inputs=inputs,
                    seed=ctx.seed,
                    random=ctx.target.random,
                    copies=ctx.target.copies,
                )
                ref.values = [
                    lv.detach().double().cpu() if rs.kind == "param" else rv
                    for lv, rv, rs in zip(low.values, ref.values, ref.slots)
                ]
                ref_out, ref_grad, _ = _run_once(ref, ctx.seed)
                if not all(bool(torch.isfinite(t).all()) for t in ref_out):
                    continue  # outside the domain in float64 too
                for what, lo, rf in (
                    ("output", low_out, ref_out),
                    ("gradient", low_grad, ref_grad),
                ):
                    k = _unstable(lo, rf, dtype)
                    if k is not None and failure is None:
                        _, _, op = _run_once(low, ctx.seed, watch=True)
                        failure = (tag, f"x{scale:g}", what, k, float(torch.cat(rf)[k]), op)
                errs.append((scale, _rel(low_out, ref_out), _rel(low_grad, ref_grad)))
            if not errs:
                continue
            if ctx.target.random:  # low-precision RNG draws differ from float64's
                lines.append(f"{tag}: finite (random: errors not comparable)")
                continue
            f_err = max(e[1] for e in errs)
            g_err = max(e[2] for e in errs)
            worst = max(worst, f_err, g_err)
            lines.append(f"{tag}: fwd {f_err:.2g}, grad {g_err:.2g}")
            if max(f_err, g_err) > EXPECTED[dtype]:
                notes.append(
                    f"{tag}: relative error fwd {f_err:.2g} / grad {g_err:.2g} above the "
                    f"expected {EXPECTED[dtype]:g} (ill-conditioned, or precision lost)"
                )
    if failure is not None:
        tag, scale, what, k, ref_value, op = failure
        where = f" (first non-finite from torch.{op})" if op else ""
        return CheckResult(
            NAME,
            FAIL,
            f"{tag} at inputs {scale}: {what} element {k} is not finite, float64 gives "
            f"{ref_value:.6g}{where}. fix: {_fix_for(op)}",
            max_rel_error=float("inf"),
            pattern="numerically unstable in low precision",
            mismatches=[Mismatch(what, (k,), tag, None, float("nan"), ref_value, scale)],
            notes=notes,
        )
    status = NOTE if notes and not lines else PASS
    if any("above the expected" in n for n in notes):
        status = NOTE
    return CheckResult(NAME, status, "; ".join(lines), max_rel_error=worst, notes=notes)


__all__ = ["run", "FAIL"]
