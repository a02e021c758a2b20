"""Cost of one non-finite replay relative to a normal training step.

    python bench/replay_cost.py            # the shipped CPU recipes
    python bench/replay_cost.py --gpu      # the GPU configs of bench/overhead.py

For each config: train 2 * diagnostics.every steps normally (instruments on), then replay
the last step the way the loop would after finding a NaN there: restore the latest snapshot,
re-run the steps after it without instruments, replay the bad step with every module watched.
Prints the watched step alone and the whole replay (restore + re-run + watched step), each as
a multiple of the median normal step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import CPU_CONFIGS, GPU_CONFIGS  # noqa: E402

from gradoctor.api import make_trainer  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, src, device_name, out_dir):
    recipe = load_recipe(
        src,
        {
            "train": {"steps": 10**9, "device": device_name},
            "output": {"dir": str(out_dir / name)},
            "diagnostics": {"every": 10, "snapshot_every": 10},
        },
    )
    if isinstance(src, dict) and recipe.data.target.endswith((":tokens", ":images")):
        recipe.data.kwargs["device"] = device_name
    t = make_trainer(recipe)
    t.guard.maybe_snapshot(t.state)
    times = []
    for _ in range(20):
        _sync(t.device)
        start = time.perf_counter()
        t.step()
        if t.record.used == t.every:
            t.flush()
            if t.step_count == 10:
                t.guard.maybe_snapshot(t.state)
        _sync(t.device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[5:])
    bad = t.step_count  # replay the last step: snapshot at step 10, re-run 11..19, watch 20
    start = time.perf_counter()
    finding, _, _ = t.guard._replay(bad, t.state, t.stepper.config, t._rerun)
    _sync(t.device)
    total = time.perf_counter() - start
    t.record.tb.close()
    return {
        "config": name,
        "step_ms": 1000 * step_s,
        "watched_step_x": finding.replay_s / step_s,
        "replay_total_x": total / step_s,
        "rerun_steps": bad - 1 - 10,
    }


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args(argv)
    configs, device = (GPU_CONFIGS, "cuda") if args.gpu else (CPU_CONFIGS, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in configs.items():
            try:
                r = measure(name, src, device, Path(tmp))
                print(
                    f"{r['config']:<16} step {r['step_ms']:8.2f} ms  watched replay step {r['watched_step_x']:6.1f}x  "
                    f"whole replay (restore + {r['rerun_steps']} re-run steps + watched) {r['replay_total_x']:6.1f}x",
                    flush=True,
                )
            except Exception as exc:
                print(f"{name:<16} ERROR {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    main()
