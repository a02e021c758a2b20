"""gradoctor's full gradient check against torch.autograd.gradcheck on the same cases.

    python bench/checkgrads_speed.py [--repeats 3]

Cases: a small linear layer, an elementwise op with 10,000 inputs, a conv layer. For each,
median wall time over ``--repeats`` of: gradcheck (slow mode: full numeric and analytic
Jacobians), gradcheck fast_mode, gradoctor's full default check (all 14 checks) and its
``fast`` variant, all float64 on CPU, measured side by side in this process. Then the time
gradoctor's first-order check takes to locate a single wrong Jacobian entry among 10,000
inputs, and whether gradcheck (both modes) notices it. Goal: default check of a small layer
within 2x of slow gradcheck; single wrong entry found in under a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradoctor.gradcheck import Case, run_case  # noqa: E402
from gradoctor.gradcheck.jacobian import compare  # noqa: E402
from gradoctor.gradcheck.target import FlatFunction, Target  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class WrongOne(torch.autograd.Function):
    """sin(x) with d/dx wrong by 1% at flat index 7777."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = (grad * x.cos()).clone()
        g.view(-1)[7777] *= 1.01
        return g


def cases():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x_lin = torch.randn(4, 16)
    conv = torch.nn.Conv2d(3, 4, 3)
    x_conv = torch.randn(2, 3, 8, 8)
    x_elt = torch.randn(10_000)

    def dbl(*ts):
        return tuple(t.detach().double().requires_grad_(True) for t in ts)

    yield (
        "linear 16->8, batch 4",
        Case("linear", lin, (x_lin,)),
        lambda *a: F.linear(*a),
        dbl(x_lin, lin.weight, lin.bias),
    )
    yield (
        "elementwise sin, 10,000 inputs",
        Case("sin", torch.sin, (x_elt,), batched=False),
        torch.sin,
        dbl(x_elt),
    )
    yield (
        "conv2d 3->4 k3 on 2x3x8x8",
        Case("conv", conv, (x_conv,)),
        lambda *a: F.conv2d(*a),
        dbl(x_conv, conv.weight, conv.bias),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU float64")
    header = f"{'case':32} {'gradcheck':>10} {'gc fast':>9} {'gradoctor':>10} {'gd fast':>9} {'ratio':>7} {'fast ratio':>10}"
    print(header)
    for label, case, fn, inputs in cases():
        slow = median_time(lambda f=fn, a=inputs: torch.autograd.gradcheck(f, a), args.repeats)
        fast = median_time(
            lambda f=fn, a=inputs: torch.autograd.gradcheck(f, a, fast_mode=True), args.repeats
        )
        ours = median_time(lambda c=case: run_case(c), args.repeats)
        ours_fast = median_time(lambda c=case: run_case(c, fast=True), args.repeats)
        result = run_case(case)
        assert result.passed, result.failure_text()
        print(
            f"{label:32} {slow:9.3f}s {fast:8.3f}s {ours:9.3f}s {ours_fast:8.3f}s "
            f"{ours / slow:6.2f}x {ours_fast / slow:9.2f}x"
        )
    x = torch.randn(10_000)
    fn = FlatFunction(Target(Case("wrong", WrongOne, (x,))))
    start = time.perf_counter()
    comp = compare(fn)
    located = time.perf_counter() - start
    where = [(m.input_index, m.output_index) for m in comp.mismatches]
    print(
        f"single wrong entry (1% at [7777]) among 10,000 inputs: located {where} in "
        f"{located:.3f}s (probe sensitivity {comp.sensitivity:.2g})"
    )
    xd = x.double().requires_grad_(True)
    for mode in (False, True):
        start = time.perf_counter()
        caught = not torch.autograd.gradcheck(
            WrongOne.apply, (xd,), fast_mode=mode, raise_exception=False
        )
        print(
            f"gradcheck fast_mode={mode}: {'caught' if caught else 'MISSED'} it in "
            f"{time.perf_counter() - start:.3f}s (no location reported)"
        )


if __name__ == "__main__":
    main()
