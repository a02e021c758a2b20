"""Cost of one Hessian-vector product relative to one gradient, side by side in one process.

For each config: the recipe's state (``build_state``), its first batch, and interleaved
timings of (a) one gradient (forward + backward of the training loss, what a step computes
before the optimizer) and (b) one HVP on the same batch by each method gradoctor curvature can
use (double backward; forward-over-reverse), medians over ``--rounds``. On CUDA also the peak
memory of each, relative to the gradient's (``max_memory_allocated`` around it).

    python bench/hvp_cost.py --threads 1           # CPU: mlp, cnn, tiny_lm
    python bench/hvp_cost.py --gpu                 # CUDA: ResNet-18 (torchvision), gpt-110M
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.overhead import CPU_CONFIGS, GPU_CONFIGS, _load  # noqa: E402
from gradoctor.hessian.functional import FunctionalLoss, ParamLayout  # noqa: E402
from gradoctor.hessian.hvp import (  # noqa: E402
    DOUBLE_BACKWARD_FIRST,
    FORWARD_FIRST,
    HessianVectorProduct,
)
from gradoctor.hessian.model_state import measurement_state  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402
from gradoctor.training.batches import compute_loss, to_device  # noqa: E402
from gradoctor.training.build import build_state  # noqa: E402

BENCH = ROOT / "bench"
HVP_GPU_CONFIGS = {
    "resnet18-fp32": {
        "model": {"_component_": f"{BENCH}/components.py:resnet18"},
        "data": {"_component_": f"{BENCH}/components.py:images", "batch_size": 128},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
        "precision": "fp32",
    },
    "gpt110m-fp32": {**GPU_CONFIGS["gpt110m-bf16"], "precision": "fp32"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, int]:
    """Seconds and (CUDA) peak bytes above the starting allocation for one call."""
    _sync(device)
    base = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    return seconds, peak


def bench_config(name: str, recipe_src, device_name: str, rounds: int, out_dir: Path) -> dict:
    recipe, device = _load(name, recipe_src, device_name, out_dir)
    state, undo = build_state(recipe, device)
    undo()
    batch = to_device(state.data.next(), device)
    model = state.model

    def loss_fn(m, b):
        return compute_loss(m, b, state.loss_fn)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()

    rows: dict[str, list[tuple[float, int]]] = {"gradient": []}
    with measurement_state(model):
        layout = ParamLayout.of(model, None)
        floss = FunctionalLoss(model, loss_fn, [batch], layout, None)
        v = torch.randn(layout.size, dtype=torch.float64, device=layout.device)
        hvps = {}
        for label, chain in (
            ("double backward", DOUBLE_BACKWARD_FIRST),
            ("forward-over-reverse", FORWARD_FIRST),
        ):
            hvp = HessianVectorProduct(floss, methods=chain[:1] + chain[2:3])
            try:
                hvp(v)  # warm-up (and the method's one-time costs)
            except Exception as exc:  # noqa: BLE001 - a method this model does not support
                print(f"  {name}: {label} unavailable: {str(exc).splitlines()[0][:120]}")
                continue
            hvps[f"HVP {label} ({hvp.method.label})"] = hvp
            rows[f"HVP {label} ({hvp.method.label})"] = []
        _timed(gradient, device)
        for r in range(rounds):
            order = list(hvps.items()) if r % 2 == 0 else list(reversed(hvps.items()))
            rows["gradient"].append(_timed(gradient, device))
            for label, hvp in order:
                rows[label].append(_timed(lambda hvp=hvp: hvp(v), device))
        model.zero_grad(set_to_none=True)
    grad_s = statistics.median(s for s, _ in rows["gradient"])
    grad_mem = max(m for _, m in rows["gradient"])
    out = {
        "config": name,
        "device": str(device),
        "params": layout.size,
        "gradient_ms": 1e3 * grad_s,
        "rows": {},
    }
    for label, values in rows.items():
        secs = sorted(s for s, _ in values)
        mem = max(m for _, m in values)
        out["rows"][label] = {
            "ms": 1e3 * statistics.median(secs),
            "time_ratio": statistics.median(secs) / grad_s,
            "time_ratio_range": (secs[0] / grad_s, secs[-1] / grad_s),
            "memory_ratio": mem / grad_mem if grad_mem else None,
        }
    return out


def bench_sharpness(name: str, recipe_src, device_name: str, rounds: int, out_dir: Path) -> dict:
    """One sharpness measurement (the ``train`` instrument) in training steps: steps with the
    instrument active vs steps with it idle, interleaved; and the overhead that gives at the
    default ``diagnostics.sharpness_every``."""
    from gradoctor.api import make_trainer
    from gradoctor.hessian.sharpness_instrument import SharpnessInstrument
    from gradoctor.recipe.schema import DiagnosticsConfig

    recipe, device = _load(f"{name}-sharpness", recipe_src, device_name, out_dir)
    recipe = load_recipe(recipe, {"diagnostics": {"sharpness_every": 1, "every": 10**6}})
    trainer = make_trainer(recipe)
    (inst,) = [i for i in trainer.instruments if isinstance(i, SharpnessInstrument)]
    for _ in range(3):
        trainer.step()
    plain, measured = [], []
    for r in range(rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            inst.every = 1 if on else 10**9
            _sync(device)
            t0 = time.perf_counter()
            trainer.step()
            _sync(device)
            (measured if on else plain).append(time.perf_counter() - t0)
    trainer.stepper.close()
    step_s = statistics.median(plain)
    cost = statistics.median(measured) / step_s - 1
    default = DiagnosticsConfig().sharpness_every
    return {
        "config": name,
        "step_ms": 1e3 * step_s,
        "measurement_steps": cost,
        "default_every": default,
        "overhead_pct": 100 * cost / default,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--configs", default=None, help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = HVP_GPU_CONFIGS if args.gpu else CPU_CONFIGS
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    device = "cuda" if args.gpu else "cpu"
    print(
        f"{'config':16s} {'params':>11s} {'what':44s} {'ms':>9s} {'x gradient':>11s} {'range':>13s} {'x memory':>9s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in configs.items():
            res = bench_config(name, src, device, args.rounds, Path(tmp))
            for label, row in res["rows"].items():
                lo, hi = row["time_ratio_range"]
                mem = f"{row['memory_ratio']:.2f}" if row["memory_ratio"] is not None else "-"
                print(
                    f"{name:16s} {res['params']:11,d} {label:44s} {row['ms']:9.2f} "
                    f"{row['time_ratio']:11.2f} {lo:6.2f}-{hi:<6.2f} {mem:>9s}"
                )
        print("\nthe train instrument (diagnostics.sharpness_every): one measurement in steps")
        for name, src in configs.items():
            res = bench_sharpness(name, src, device, max(5, args.rounds // 2), Path(tmp))
            print(
                f"{name:16s} step {res['step_ms']:8.2f} ms · one measurement = "
                f"{res['measurement_steps']:.1f} steps · at every {res['default_every']}: "
                f"{res['overhead_pct']:.2f}% of the run"
            )


if __name__ == "__main__":
    main()
