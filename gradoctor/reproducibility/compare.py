"""Compare two runs' op streams and name the root of their first difference.

Step by step, the records are aligned by ``(phase, module, op)`` (identical sequences are
compared in order; otherwise ``difflib.SequenceMatcher`` aligns them, so an op inserted or
missing in one run does not shift every later comparison). Within the aligned part, the first
record whose written tensors differ (digest or shape; memory an ``empty``-family op returned
is not compared, its readers are) is the root: every earlier record's outputs were equal, so
its recorded inputs were too unless they came from outside the recorded ops. Its inputs,
arguments and generator state are then compared to say why (``causes.py``). A structural
difference before any value difference is reported as ``control_flow``.

Cost: linear in the records, plus the alignment of a step whose sequences differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from gradoctor.reproducibility.causes import explain
from gradoctor.reproducibility.stream import KIND_NAMES, UNINITIALISED, OpRecord, OpStream


@dataclass
class Divergence:
    """The first difference between two runs. ``kind``: ``value`` (an op's output differs),
    ``inserted`` (run 2 ran an op run 1 did not), ``missing`` (run 1 ran an op run 2 did not).
    ``index`` is ``(index in run 1's step, index in run 2's step)`` of the record (for the
    capture re-run). ``max_abs_diff`` is filled in by the capture re-run (None until then, or
    when it did not recur). ``evidence``: what differed (inputs by position and origin, the
    argument CRCs, the generator state, shapes)."""

    step: int
    phase: str
    module: str
    op: str
    kind: str
    cause_code: str
    cause: str
    fix: str
    index: tuple[int, int]
    max_abs_diff: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "phase": self.phase,
            "module": self.module,
            "op": self.op,
            "kind": self.kind,
            "max_abs_diff": self.max_abs_diff,
            "cause_code": self.cause_code,
            "cause": self.cause,
            "fix": self.fix,
            "evidence": self.evidence,
        }


def _written_differ(a: OpStream, ra: OpRecord, b: OpStream, rb: OpRecord) -> bool:
    if ra.shapes != rb.shapes or len(ra.outputs) != len(rb.outputs):
        return True
    return any(
        a.kinds[sa] != UNINITIALISED and a.digests[sa] != b.digests[sb]
        for sa, sb in zip(ra.outputs, rb.outputs)
    )


def _why(a: OpStream, ra: OpRecord, b: OpStream, rb: OpRecord) -> tuple[str, dict[str, Any]]:
    """The cause code of a root record, and the evidence for it."""
    if ra.phase == "init":
        return "initial_weights", {"tensor": ra.op}
    if ra.phase == "data":
        return "data", {"tensor": ra.op, "shapes": [list(ra.shapes[0]), list(rb.shapes[0])]}
    if ra.rng >= 0 and rb.rng >= 0 and a.digests[ra.rng] != b.digests[rb.rng]:
        return "generator_state", {"generator_state": "differs"}
    differing = [
        {"input": i, "origin": KIND_NAMES[a.kinds[sa]]}
        for i, (sa, sb) in enumerate(zip(ra.inputs, rb.inputs))
        if a.digests[sa] != b.digests[sb]
    ]
    if differing:
        origins = {d["origin"] for d in differing}
        code = "uninitialised_memory" if "uninitialised" in origins else "external_input"
        return code, {"differing_inputs": differing}
    if ra.args != rb.args or len(ra.inputs) != len(rb.inputs):
        return "python_value", {"arguments": "differ (non-tensor values or input shapes)"}
    return "nondeterministic_kernel", {"inputs": "bitwise equal", "arguments": "equal"}


def _value_divergence(
    a: OpStream, ra: OpRecord, b: OpStream, rb: OpRecord, index: tuple[int, int]
) -> Divergence:
    code, evidence = _why(a, ra, b, rb)
    if ra.shapes != rb.shapes:
        evidence["shapes"] = [[list(s) for s in ra.shapes], [list(s) for s in rb.shapes]]
    cause, fix = explain(code, ra.short_op, ra.module)
    return Divergence(
        ra.step,
        ra.phase,
        ra.module,
        ra.short_op,
        "value",
        code,
        cause,
        fix,
        index,
        evidence=evidence,
    )


def _structural(
    step: int, tag: str, first_a: OpRecord | None, first_b: OpRecord | None, index: tuple[int, int]
) -> Divergence:
    if tag == "insert":
        rec, kind = first_b, "inserted"
        detail = f"run 2 ran {first_b.short_op} in {first_b.module} where run 1 did not"  # type: ignore[union-attr]
    elif tag == "delete":
        rec, kind = first_a, "missing"
        detail = f"run 1 ran {first_a.short_op} in {first_a.module}, run 2 did not"  # type: ignore[union-attr]
    else:
        rec, kind = first_a, "missing"
        detail = (
            f"run 1 ran {first_a.short_op} in {first_a.module} where run 2 ran "  # type: ignore[union-attr]
            f"{first_b.short_op} in {first_b.module}"  # type: ignore[union-attr]
        )
    assert rec is not None
    cause, fix = explain("control_flow", rec.short_op, rec.module, detail)
    return Divergence(
        step,
        rec.phase,
        rec.module,
        rec.short_op,
        kind,
        "control_flow",
        cause,
        fix,
        index,
        evidence={"detail": detail},
    )


def first_divergence(a: OpStream, b: OpStream) -> Divergence | None:
    """The root of the first difference between runs ``a`` and ``b``, or None when every
    record matches bitwise (module docstring)."""
    steps_a, steps_b = a.steps(), b.steps()
    for step in sorted(set(steps_a) | set(steps_b)):
        ia, ib = steps_a.get(step, []), steps_b.get(step, [])
        keys_a = [a.records[i].key for i in ia]
        keys_b = [b.records[i].key for i in ib]
        if keys_a == keys_b:
            blocks = [("equal", 0, len(ia), 0, len(ib))]
        else:
            blocks = SequenceMatcher(None, keys_a, keys_b, autojunk=False).get_opcodes()
        for tag, a0, a1, b0, b1 in blocks:
            if tag != "equal":
                first_a = a.records[ia[a0]] if a0 < a1 else None
                first_b = b.records[ib[b0]] if b0 < b1 else None
                return _structural(step, tag, first_a, first_b, (a0, b0))
            for k in range(a1 - a0):
                ra, rb = a.records[ia[a0 + k]], b.records[ib[b0 + k]]
                if _written_differ(a, ra, b, rb):
                    return _value_divergence(a, ra, b, rb, (a0 + k, b0 + k))
    return None


__all__ = ["Divergence", "first_divergence"]
