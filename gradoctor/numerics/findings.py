"""What the numerics audit reports: a ``Finding`` per (code, module, op, phase), the codes'
stable names, their fixes, and the severity rules with their stated thresholds.

Severity (the same for every code): ``error`` when the pattern produced inf/NaN, a zero
that makes the backward inf/NaN, or an exactly-zero gradient in the audited steps;
``warning`` when it came within the code's stated factor of doing so, in the dtype the op ran
in or in the target precision; ``info`` when the pattern is present with headroom (the next
batch may differ). The thresholds (``THRESHOLDS``):

- ``naive_softmax`` / ``naive_logsumexp``: the largest exponent seen against the dtype's
  overflow point ln(max) (88.72 in fp32/bf16, 11.09 in fp16); warning within ln(100) = 4.6 of it.
- ``log_of_softmax``: the smallest probability; ``-inf`` once it underflows to 0 (a logit gap
  of ~104 in fp32, ~17-20 in fp16); warning below 100x the dtype's smallest subnormal.
- ``log_of_sigmoid``: the largest |logit| against the point where the sigmoid rounds to
  exactly 1 (17.3 in fp32, 8.3 in fp16, 6.2 in bf16); warning above half of it;
  error when elements were clamped (BCE's log clamp at -100: loss 100, gradient exactly 0).
- ``naive_variance``: the bits lost to cancellation, log2(E[x²] / |E[x²] - E[x]²|); warning
  when more than half the mantissa (12 of 24 in fp32, 4 of 8 in bf16, 5.5 of 11 in fp16).
- ``sqrt_at_zero``: the smallest input; warning below 1e-12 (a gradient above 5e5).
- ``unguarded_division``: the smallest |divisor|; warning below 1e-6.
- ``log_of_zero``: the smallest input; warning below 100x the dtype's smallest subnormal.
- ``overflow_risk``: an op's largest |output| against the target's max (fp16 65504);
  warning within a factor of 16.
- ``underflow``: the share of a parameter's nonzero gradient elements that flush to zero in
  the target precision (after the loss scale); warning above 5%, info above 0.5%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}

THRESHOLDS = {
    "exp_margin": math.log(100.0),  # naive softmax / logsumexp: warning within this of overflow
    "tiny_factor": 100.0,  # log of (near) zero: warning below this x the smallest subnormal
    "sigmoid_fraction": 0.5,  # log of sigmoid: warning above this fraction of saturation
    "lost_fraction": 0.5,  # naive variance: warning above this fraction of the mantissa lost
    "sqrt_min": 1e-12,  # sqrt: warning below (gradient 1/(2 sqrt x) above 5e5)
    "divisor_min": 1e-6,  # division: warning below this |divisor|
    "overflow_factor": 16.0,  # activations: warning within this factor of the target's max
    "underflow_warning": 0.05,  # share of a gradient's nonzero elements flushed to zero
    "underflow_info": 0.005,
}

FIXES = {
    "naive_softmax": "use torch.softmax(x, dim) (or subtract the max first: "
    "exp(x - x.amax(dim, keepdim=True)))",
    "naive_logsumexp": "use torch.logsumexp(x, dim)",
    "log_of_softmax": "use torch.log_softmax(x, dim), or F.cross_entropy / F.nll_loss on "
    "log-probabilities computed from the logits",
    "log_of_sigmoid": "use F.logsigmoid(x), or F.binary_cross_entropy_with_logits(logits, "
    "target) instead of binary_cross_entropy on sigmoid probabilities",
    "naive_variance": "use torch.var(x, dim, unbiased=False) (or center first: "
    "((x - x.mean()) ** 2).mean())",
    "sqrt_at_zero": "use torch.linalg.vector_norm (its gradient at 0 is 0), or sqrt(x + eps)",
    "unguarded_division": "guard the divisor: x / d.clamp_min(eps), or F.normalize(x, dim, "
    "eps=...) for x / x.norm()",
    "log_of_zero": "guard the argument: log(x.clamp_min(eps)), log1p for log(1 + x), or keep "
    "the computation in log space",
    "overflow_risk": "keep the module in fp32 (outside autocast), rescale its inputs or "
    "weights (a normalisation before it), or use bf16, whose range is fp32's",
    "underflow": "raise the loss scale (GradScaler init_scale / growth), keep the module's "
    "gradients in fp32, or use bf16",
}

WHAT = {
    "naive_softmax": "a softmax written as exp(x) / sum(exp(x)) without subtracting the max",
    "naive_logsumexp": "log(sum(exp(x))) without subtracting the max",
    "log_of_softmax": "log() of softmax probabilities",
    "log_of_sigmoid": "log() of sigmoid probabilities (or binary_cross_entropy on them)",
    "naive_variance": "a variance computed as E[x²] - E[x]²",
    "sqrt_at_zero": "sqrt() of a value that can be 0 (its gradient there is inf)",
    "unguarded_division": "a division by a tensor with no guard against 0",
    "log_of_zero": "log() of a value that can reach 0",
    "overflow_risk": "values near the target precision's largest number",
    "underflow": "gradient elements below the target precision's smallest number",
}

CODES = tuple(FIXES)


@dataclass
class Finding:
    """One pattern found (JSON contract: ``to_dict()``). ``module``: qualified name of the
    innermost module running the op (``(loss)``/``(outside)`` outside the model's forward);
    ``op``: the aten op that completes the pattern; ``phase``: ``forward`` (the patterns) or
    ``backward`` (gradients); ``step``: the first audited step it was seen at; ``steps``: all
    of them; ``occurrences``: how many times; ``evidence``: the worst measured numbers."""

    code: str
    severity: str
    module: str
    op: str
    phase: str
    step: int
    message: str
    evidence: dict[str, Any]
    fix: str
    steps: list[int] = field(default_factory=list)
    occurrences: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "module": self.module,
            "op": self.op,
            "phase": self.phase,
            "step": self.step,
            "message": self.message,
            "evidence": self.evidence,
            "fix": self.fix,
            "steps": self.steps,
            "occurrences": self.occurrences,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Finding:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def smallest_subnormal(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)


def exp_overflow_point(dtype: torch.dtype) -> float:
    """ln(max): exp overflows above it (88.72 fp32/bf16, 11.09 fp16)."""
    return math.log(float(torch.finfo(dtype).max))


def sigmoid_saturation(dtype: torch.dtype) -> float:
    """The logit above which sigmoid rounds to exactly 1: 1 - sigmoid(x) = e^-x (for large x)
    falls below half the spacing of the numbers just under 1 (eps / 2), i.e. u = eps / 4:
    ln((1 - u) / u) — 17.3 in fp32, 8.3 in fp16, 6.2 in bf16."""
    u = float(torch.finfo(dtype).eps) / 4
    return math.log((1 - u) / u)


def mantissa_bits(dtype: torch.dtype) -> float:
    return -math.log2(float(torch.finfo(dtype).eps)) + 1


def merge(findings: dict[tuple[str, str, str, str], Finding], new: Finding) -> None:
    """Fold ``new`` into ``findings`` (keyed by code, module, op, phase): the worst severity
    (and its evidence and message) wins; steps and occurrences add up."""
    key = (new.code, new.module, new.op, new.phase)
    old = findings.get(key)
    if old is None:
        new.steps = [new.step]
        findings[key] = new
        return
    old.occurrences += new.occurrences
    if new.step not in old.steps:
        old.steps.append(new.step)
    if SEVERITY_RANK[new.severity] > SEVERITY_RANK[old.severity]:
        old.severity, old.message, old.evidence = new.severity, new.message, new.evidence


def ranked(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; within a severity, the order they were found."""
    return sorted(findings, key=lambda f: -SEVERITY_RANK[f.severity])


__all__ = [
    "CODES",
    "FIXES",
    "SEVERITY_RANK",
    "THRESHOLDS",
    "WHAT",
    "Finding",
    "exp_overflow_point",
    "mantissa_bits",
    "merge",
    "ranked",
    "sigmoid_saturation",
    "smallest_subnormal",
]
