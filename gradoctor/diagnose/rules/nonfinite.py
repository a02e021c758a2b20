"""``nonfinite_loss`` and ``nonfinite_origin``: the first NaN/Inf, and where the replay found it."""

from __future__ import annotations

import math

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis

_OP_FIXES = {
    "_to_copy": "a value beyond fp16's range (65504) was cast to float16 here: normalize the inputs or use bf16",
    "log": "clamp the input of log (e.g. x.clamp_min(eps)) or use log1p / log_softmax",
    "sqrt": "add an epsilon inside sqrt, or clamp its input at 0",
    "div": "guard the denominator (add eps or clamp away from 0)",
    "pow": "clamp the base (negative base with fractional exponent gives NaN)",
    "exp": "subtract the max before exp (use logsumexp / softmax), or clamp the input",
    "rsqrt": "add an epsilon before rsqrt (as LayerNorm's eps does)",
    "mm": "activations overflow the matmul: scale inputs down, or use bf16 instead of fp16",
    "addmm": "activations overflow the matmul: scale inputs down, or use bf16 instead of fp16",
    "bmm": "activations overflow the matmul: scale inputs down, or use bf16 instead of fp16",
    "convolution": "activations overflow the convolution: normalize inputs, or use bf16",
}


def _fix_for(replay: dict, precision: str) -> str:
    phase, op, module = replay.get("phase"), str(replay.get("op") or ""), replay.get("module")
    if phase == "input":
        return "the batch itself holds NaN/Inf: check the data pipeline (normalization, division by a zero std, missing values)"
    if phase == "backward":
        return (
            f"the backward of '{module}' turns a finite gradient into {replay.get('kind')}: check its backward "
            f"(run `gradoctor check-grads` on it){'' if not op else f'; the autograd node is {op}'}"
        )
    base = op.split(".")[0].rstrip("_")
    for key, fix in _OP_FIXES.items():
        if base == key or base.endswith(key):
            if precision == "fp16" and key in ("mm", "addmm", "bmm", "convolution", "exp"):
                return fix + "; bf16 has fp32's range"
            return fix
    return f"inspect '{module}' around op {op or '?'}; lower the learning rate or clip gradients if values blow up over steps"


def check(ctx: RunContext) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    losses, steps = ctx.losses(), ctx.steps()
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    loss_finding = next((f for f in ctx.findings if f["reason"] == "loss"), None)
    if bad or loss_finding:
        first_step = int(steps[bad[0]]) if bad else loss_finding["step"]
        good = [i for i in range(len(losses)) if math.isfinite(losses[i]) and steps[i] < first_step]
        any_finding = next((f for f in ctx.findings if f.get("replay", {}).get("module")), None)
        replay = (loss_finding or any_finding or {}).get("replay", {})
        out.append(
            Diagnosis(
                code="nonfinite_loss",
                severity="error",
                message=f"the loss became {'NaN' if bad and math.isnan(losses[bad[0]]) else 'non-finite'} at step {first_step}",
                modules=[replay["module"]] if replay.get("module") else [],
                steps=[first_step],
                evidence={
                    "first_step": first_step,
                    "nonfinite_steps": len(bad),
                    "last_finite_loss": float(losses[good[-1]]) if good else None,
                    "last_finite_step": int(steps[good[-1]]) if good else None,
                },
                fix=_fix_for(replay, ctx.precision)
                if replay.get("phase") not in (None, "none", "unavailable")
                else "lower the learning rate, add gradient clipping (train.clip_grad_norm), or use bf16",
            )
        )
    for finding in ctx.findings:
        replay = finding.get("replay", {})
        if replay.get("phase") in (None, "none", "unavailable"):
            continue
        where = (
            "the input batch"
            if replay["phase"] == "input"
            else f"the {replay['phase']} of '{replay.get('module')}'"
        )
        op = f" (op {replay['op']})" if replay.get("op") and replay["phase"] != "input" else ""
        overflow = finding["reason"] == "overflow"
        out.append(
            Diagnosis(
                code="nonfinite_origin",
                severity="warning" if overflow else "error",
                message=f"the first {replay.get('kind', 'non-finite')} value of step {finding['step']} appears in {where}{op}"
                + (" (persistent fp16 overflow)" if overflow else ""),
                modules=[m for m in [replay.get("module"), *replay.get("propagated_to", [])] if m],
                steps=[finding["step"]],
                evidence={
                    "trigger": finding["reason"],
                    **replay,
                    "on_nonfinite": finding.get("mode"),
                },
                fix=_fix_for(replay, ctx.precision),
            )
        )
    return out
