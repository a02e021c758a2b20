"""Cost of ``gradoctor audit``: the pattern detector on a step against a plain step, side by
side in one process, and the precision audit of one batch in forward+backward passes.

For each config: the recipe's run state and one ``TrainStep``; blocks of ``--block`` plain
steps and of steps with the pattern detector (graded against ``--target``) alternate for
``--rounds`` rounds, each step ending in one host sync; then the precision audit of one
batch is timed against one plain step. Reported: median ms per step, the detector's ratio
(goal <= 3), and the precision audit in plain steps (goal <= 3 forward+backward passes plus
the local forwards and the verification runs).

    python bench/audit_cost.py --threads 1          # CPU: mlp, cnn, tiny_lm, a TransformerEncoderLayer
    python bench/audit_cost.py --gpu                # CUDA: gpt-110M bf16, ResNet-18 fp32
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
from bench.side_by_side import interleaved, timed  # noqa: E402
from gradoctor.numerics.patterns import PatternDetector  # noqa: E402
from gradoctor.numerics.precision import DTYPES, PrecisionAudit, PrecisionOptions  # noqa: E402
from gradoctor.training.batches import to_device  # noqa: E402
from gradoctor.training.build import build_state  # noqa: E402
from gradoctor.training.step import StepConfig, TrainStep  # noqa: E402

TRANSFORMER = {
    "model": {
        "_component_": f"{ROOT}/sample_models/unstable_numerics.py:TransformerBlock",
        "d_model": 128,
    },
    "data": {
        "_component_": "gradoctor.data.synthetic_classification",
        "batch_size": 256,
        "n_samples": 4096,
    },
    "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
    "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
    "precision": "bf16",
}


def measure(name: str, src, device_name: str, target: str, rounds: int, block: int) -> dict:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        recipe, device = _load(name, src, device_name, Path(tmp))
        state, _ = build_state(recipe, device)
        stepper = TrainStep(state, StepConfig.from_recipe(recipe))
        detector = PatternDetector(state.model, target=DTYPES[target], steps=None)
        for _ in range(3):
            stepper.run([]).loss.item()
        stepper.run([detector])
        times = interleaved(
            {
                "plain": lambda: stepper.run([]).loss.item(),
                "audited": lambda: stepper.run([detector]),
            },
            rounds,
            block,
            device,
        )
        batch = to_device(state.data.next(), device)
        audit = PrecisionAudit(state.model, state.loss_fn, device, PrecisionOptions(target))
        precision_s = []
        reports = []
        for _ in range(2):
            precision_s.append(timed(lambda: reports.append(audit.run(batch)), device))
        report = reports[-1]
        stepper.close()
    plain = statistics.median(times["plain"])
    audited = statistics.median(times["audited"])
    return {
        "config": name,
        "plain_ms": 1000 * plain,
        "audited_ms": 1000 * audited,
        "ratio": audited / plain,
        "precision_steps": min(precision_s) / plain,
        "verify_runs": (report.keep_fp32_verified or {}).get("runs", 0),
        "ops": detector.ops_seen // max(1, len(times["audited"]) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--target", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu:
        configs = {
            "gpt110m-bf16": GPU_CONFIGS["gpt110m-bf16"],
            "resnet18-fp32": HVP_GPU_CONFIGS["resnet18-fp32"],
        }
        device_name = "cuda"
    else:
        configs = {**CPU_CONFIGS, "transformer": TRANSFORMER}
        device_name = "cpu"
    print(
        f"{'config':<14}{'plain ms':>10}{'audited ms':>12}{'ratio':>8}{'ops/step':>10}"
        f"{'precision (steps)':>19}{'verify runs':>13}"
    )
    for name, src in configs.items():
        r = measure(name, src, device_name, args.target, args.rounds, args.block)
        print(
            f"{r['config']:<14}{r['plain_ms']:>10.2f}{r['audited_ms']:>12.2f}{r['ratio']:>8.2f}"
            f"{r['ops']:>10}{r['precision_steps']:>19.2f}{r['verify_runs']:>13}"
        )


if __name__ == "__main__":
    main()
