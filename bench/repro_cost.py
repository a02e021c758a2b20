"""Cost of ``gradoctor repro``'s recorder: a recorded step against a plain step, side by side.

For each config: the recipe's run state (``build_state``) and one ``TrainStep``; blocks of
``--block`` plain steps and of recorded steps (the op-digest recorder attached) alternate for
``--rounds`` rounds, each step ending in one host sync (the recorder's own; ``loss.item()``
for the plain step). Reported: median ms per step of each, their ratio (goal: <= 2), ops
recorded per step and digests per step.

    python bench/repro_cost.py --threads 1         # CPU: mlp, cnn, tiny_lm
    python bench/repro_cost.py --gpu               # CUDA: gpt-110M bf16, ResNet-18 fp32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.hvp_cost import HVP_GPU_CONFIGS  # noqa: E402
from bench.overhead import CPU_CONFIGS, GPU_CONFIGS, _load  # noqa: E402
from bench.side_by_side import interleaved  # noqa: E402
from gradoctor.reproducibility.recorder import OpDigestRecorder  # noqa: E402
from gradoctor.training.build import build_state  # noqa: E402
from gradoctor.training.step import StepConfig, TrainStep  # noqa: E402


def measure(name: str, src, device_name: str, rounds: int, block: int, warmup: int) -> dict:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        recipe, device = _load(name, src, device_name, Path(tmp))
        state, _ = build_state(recipe, device)
        stepper = TrainStep(state, StepConfig.from_recipe(recipe))
        recorder = OpDigestRecorder(state.model)
        for _ in range(warmup):
            stepper.run([]).loss.item()
        for _ in range(2):
            stepper.run([recorder])
        n0, d0 = len(recorder.stream.records), len(recorder.stream.kinds)
        stepper.run([recorder])
        per_step_ops = len(recorder.stream.records) - n0
        per_step_digests = len(recorder.stream.kinds) - d0

        def recorded() -> None:
            stepper.run([recorder])
            recorder.stream.records.clear()  # keep the stream from growing over the run

        times = interleaved(
            {"plain": lambda: stepper.run([]).loss.item(), "recorded": recorded},
            rounds,
            block,
            device,
        )
        stepper.close()
    plain, rec = statistics.median(times["plain"]), statistics.median(times["recorded"])
    return {
        "config": name,
        "plain_ms": 1000 * plain,
        "recorded_ms": 1000 * rec,
        "ratio": rec / plain,
        "ops_per_step": per_step_ops,
        "digests_per_step": per_step_digests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu:
        configs = {
            **{"gpt110m-bf16": GPU_CONFIGS["gpt110m-bf16"]},
            "resnet18-fp32": HVP_GPU_CONFIGS["resnet18-fp32"],
        }
        device_name = "cuda"
    else:
        configs, device_name = dict(CPU_CONFIGS), "cpu"
    print(
        f"{'config':<15}{'plain ms':>10}{'recorded ms':>13}{'ratio':>8}{'ops/step':>10}"
        f"{'digests/step':>14}"
    )
    for name, src in configs.items():
        r = measure(name, src, device_name, args.rounds, args.block, args.warmup)
        print(
            f"{r['config']:<15}{r['plain_ms']:>10.2f}{r['recorded_ms']:>13.2f}{r['ratio']:>8.2f}"
            f"{r['ops_per_step']:>10}{r['digests_per_step']:>14}"
        )


if __name__ == "__main__":
    main()
