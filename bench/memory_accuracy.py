"""Accuracy of ``gradoctor memory-profile``: predicted vs measured peak per configuration.

    python bench/memory_accuracy.py          # CUDA if present: shipped samples, ~110M-param
                                             # transformer, ResNet-50 (if torchvision imports)
    python bench/memory_accuracy.py --cpu    # a tiny config, to try it without a GPU

Each model is profiled once (its five-step measurement), planned for a budget of 75% of its
measured peak (so the checkpoint plan is not empty), and every what-if configuration is then
run for real: measured is ``torch.cuda.max_memory_allocated`` on CUDA, tracked tensor bytes on
CPU. Prints one row per configuration and, per model, the largest |error| and the profile's
cost in training steps. Goal: |error| <= 5% on CUDA. Runtime on an H100: about a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradoctor.memory.api import analyse, measure  # noqa: E402
from gradoctor.memory.measure import ProfileSession  # noqa: E402
from gradoctor.memory.units import format_bytes  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402

SM, BENCH = ROOT / "sample_models", ROOT / "bench"


def configs(cpu: bool) -> dict[str, object]:
    if cpu:
        return {
            "mlp": ROOT / "recipes" / "mlp.yaml",
            "tiny-lm-cpu": {
                "model": {
                    "_component_": f"{SM}/tiny_lm.py:TinyLM",
                    "vocab_size": 256,
                    "d_model": 64,
                    "n_layers": 2,
                    "n_heads": 4,
                    "seq_len": 32,
                },
                "data": {
                    "_component_": "gradoctor.data.token_sequences",
                    "batch_size": 8,
                    "seq_len": 32,
                    "vocab_size": 256,
                    "n_samples": 64,
                },
                "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-4},
                "precision": "bf16",
                "train": {"device": "cpu"},
            },
        }
    out: dict[str, object] = {n: ROOT / "recipes" / f"{n}.yaml" for n in ("mlp", "cnn", "tiny_lm")}
    out["gpt110m-bf16"] = {
        "model": {
            "_component_": f"{SM}/tiny_lm.py:TinyLM",
            "vocab_size": 32000,
            "d_model": 768,
            "n_layers": 12,
            "n_heads": 12,
            "seq_len": 512,
        },
        "data": {
            "_component_": f"{BENCH}/components.py:tokens",
            "batch_size": 8,
            "seq_len": 512,
            "n_batches": 1,
        },
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-4},
        "precision": "bf16",
        "train": {"clip_grad_norm": 1.0},
    }
    try:
        import torchvision  # noqa: F401

        out["resnet50-fp16"] = {
            "model": {"_component_": f"{BENCH}/components.py:resnet50"},
            "data": {
                "_component_": f"{BENCH}/components.py:images",
                "batch_size": 32,
                "n_batches": 1,
            },
            "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
            "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
            "precision": "fp16",
        }
    except ImportError:
        print("torchvision not importable: ResNet-50 skipped")
    return out


def run(name: str, recipe: object, overrides: dict) -> float:
    wall = time.perf_counter()
    session = ProfileSession(load_recipe(recipe, overrides))  # building the recipe: not profile
    t0 = time.perf_counter()
    m = measure(session, steps=1)
    base = m.traces[session.recipe.precision][m.batch_size]
    residual = m.residuals.get(session.recipe.precision, {}).get(m.batch_size, 0)
    budget = int(0.75 * (base.peak()[0] + residual))
    p = analyse(session, m, None, budget, True, time.perf_counter() - t0)
    print(
        f"\n{name}: {p.device}, {p.precision}, batch {p.batch_size}, peak "
        f"{format_bytes(p.peak)}, budget {format_bytes(budget)}, plan "
        f"{p.plan.recipe_names or '[]'} (fits: {p.plan.fits}), profile "
        f"{p.cost['profile_step_equivalents']:.1f} steps"
    )
    print(
        f"  {'precision':9} {'ckpt':6} {'batch':>5} {'predicted':>11} {'measured':>11} {'error':>7}"
    )
    worst = 0.0
    for c in p.checks:
        err = f"{c.error_pct:+.2f}%" if c.error_pct is not None else c.status
        measured = format_bytes(c.measured) if c.measured is not None else "-"
        print(
            f"  {c.precision:9} {c.checkpoint:6} {c.batch_size:>5} "
            f"{format_bytes(c.predicted):>11} {measured:>11} {err:>7}"
        )
        if c.error_pct is not None:
            worst = max(worst, abs(c.error_pct))
    print(f"  max |error| {worst:.2f}%, wall {time.perf_counter() - wall:.1f} s")
    del session
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny CPU configs")
    parser.add_argument("--only", nargs="*", help="config names to run")
    args = parser.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    overrides = {"train": {"device": "cpu" if cpu else "cuda"}}
    worst = {}
    for name, recipe in configs(cpu).items():
        if args.only and name not in args.only:
            continue
        worst[name] = run(name, recipe, overrides)
    print("\nmax |error| per model: " + ", ".join(f"{k} {v:.2f}%" for k, v in worst.items()))
    return 0 if all(v <= 5.0 for v in worst.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
