"""The numerics audit's findings at ``warning`` or ``error``, as diagnoses with the same codes.

``train`` audits its first step (``diagnostics.audit: first``, the default): the pattern
detector of ``gradoctor audit`` (``numerics/patterns.py``) names unstable patterns — a naive
softmax, log of a softmax, BCE on saturated sigmoid probabilities, E[x²] − E[x]², ... — on the
run's own values before anything is non-finite. Reads ``history.numerics``; ``info``
findings (a pattern with headroom) stay in the history and are left to ``gradoctor audit``.
"""

from __future__ import annotations

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.types import Diagnosis


def check(ctx: RunContext) -> list[Diagnosis]:
    out = []
    for f in ctx.history.numerics:
        if f.get("severity") not in ("warning", "error"):
            continue
        out.append(
            Diagnosis(
                code=f["code"],
                severity=f["severity"],
                message=f"{f['message']} (in {f['module']}, {f['op']}, {f['phase']})",
                fix=f["fix"] + "; `gradoctor audit` on the recipe shows every finding",
                modules=[f["module"]],
                steps=list(f.get("steps") or [f["step"]]),
                evidence={"op": f["op"], "phase": f["phase"], **f.get("evidence", {})},
            )
        )
    return out
