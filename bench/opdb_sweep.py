"""False-positive sweep: gradoctor's full check over PyTorch's OpInfo database.

    python bench/opdb_sweep.py                  # every differentiable op, 1 sample each
    python bench/opdb_sweep.py --samples 2 --limit 100 --fast --json bench/out/opdb.json

Every op in ``op_db`` has correct gradients (PyTorch's own test suite checks them), so each
failure here is a false alarm by gradoctor or a real low-precision weakness of the op
(the precision check's "non-finite in bfloat16 where float64 is finite"). Prints counts of
ops that pass, fail and are skipped, with the reasons, and failures grouped by check.
Needs ``expecttest`` (imported by torch's internal test utilities).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradoctor.errors import UsageError  # noqa: E402
from gradoctor.gradcheck.api import run_case  # noqa: E402
from gradoctor.gradcheck.opdb import cases_for, differentiable_ops, skip_reason  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1, help="samples per op")
    parser.add_argument("--limit", type=int, default=0, help="only the first N ops (0: all)")
    parser.add_argument("--fast", action="store_true", help="probes instead of full Jacobians")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    ops = differentiable_ops()
    if args.limit:
        ops = ops[: args.limit]
    passed, failed, skipped = [], {}, {}
    by_check: collections.Counter[str] = collections.Counter()
    for op in ops:
        label = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        reason = skip_reason(op)
        if reason:
            skipped[label] = reason
            continue
        try:
            cases = list(cases_for(op, args.samples))
        except Exception as exc:  # sample generation itself failed
            skipped[label] = f"sample_inputs raised {type(exc).__name__}"
            continue
        if not cases:
            skipped[label] = "no non-empty sample"
            continue
        problems = []
        try:
            results = [(case, run_case(case, fast=args.fast)) for case in cases]
        except UsageError:  # e.g. view_as_complex: no floating-point output to check
            skipped[label] = "usage error (nothing to differentiate)"
            continue
        except Exception as exc:  # e.g. sparse CSR inputs: not supported by check-grads
            skipped[label] = f"gradoctor raised {type(exc).__name__}"
            continue
        for case, result in results:
            for check in result.failures:
                problems.append(f"{case.name}: {check.name}: {check.message[:160]}")
                by_check[check.name] += 1
        if problems:
            failed[label] = problems
        else:
            passed.append(label)
    elapsed = time.perf_counter() - start
    total = len(passed) + len(failed) + len(skipped)
    print(
        f"{total} ops ({args.samples} sample(s) each, {'fast' if args.fast else 'full'} check) "
        f"in {elapsed:.0f}s: {len(passed)} pass, {len(failed)} fail, {len(skipped)} skipped"
    )
    reasons = collections.Counter(skipped.values())
    for reason, n in reasons.most_common():
        print(f"  skipped {n:3d}: {reason}")
    for check, n in by_check.most_common():
        print(f"  failed check {check!r}: {n} sample(s)")
    for label, problems in failed.items():
        print(f"FAIL {label}")
        for p in problems:
            print(f"    {p}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"passed": passed, "failed": failed, "skipped": skipped, "seconds": elapsed},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
