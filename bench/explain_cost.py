"""Cost of ``gradoctor explain``'s methods per example, and Integrated Gradients with
automatic steps against the usual fixed 50 and 300.

On the shipped digits CNN (``recipes/cnn.yaml``) trained for ``--train-steps`` steps (and
untrained), for its first ``--samples`` examples, in fp32, zero baseline: per method the
gradient evaluations and seconds per example; for IG the completeness error |Σa − ΔF| / |ΔF|
(median, p90, max) and the evaluations at auto steps (tolerance 1%) and at a fixed 50 and
300 Gauss–Legendre steps; the row budget (rows per forward+backward: the memory bound).

    python bench/explain_cost.py --threads 1
    python bench/explain_cost.py --gpu
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

import gradoctor  # noqa: E402
from gradoctor.attribution.api import explain  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402
from gradoctor.training.build import build_state  # noqa: E402
from gradoctor.training.checkpoint_io import load_checkpoint  # noqa: E402


def _model(train_steps: int, device: str, tmp: Path):  # noqa: ANN202
    recipe = load_recipe(
        ROOT / "recipes" / "cnn.yaml",
        {
            "train": {"device": device, "steps": max(train_steps, 1)},
            "output": {"dir": str(tmp / f"run{train_steps}")},
        },
    )
    state, undo = build_state(recipe, torch.device(device))
    undo()
    if train_steps:
        gradoctor.train(recipe)
        state.load_state_dict(load_checkpoint(tmp / f"run{train_steps}"))
    return state


def _q(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def _relu_cnn(train_steps: int, device: str):  # noqa: ANN202
    """A plain ReLU CNN (no normalisation) on the digits, trained in-process with Adam."""
    from gradoctor.data.digits_data import digits

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 64, 10),
    ).to(device)
    loader = digits(batch_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    done = 0
    while done < train_steps:
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
            opt.step()
            done += 1
            if done >= train_steps:
                break
    xs = next(iter(digits(batch_size=256)))[0]
    return model.eval(), xs.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    cases = []
    for steps in (args.train_steps, 0):
        model, xs = _relu_cnn(steps, device)
        label = f"ReLU CNN, {'trained ' + str(steps) + ' steps' if steps else 'untrained'}"
        cases.append((label, model, xs, "zero"))
    with tempfile.TemporaryDirectory() as tmp:
        state = _model(args.train_steps, device, Path(tmp))
        xs = torch.cat([state.data.next()[0] for _ in range(4)]).to(device)
        for baseline in ("mean", "zero"):
            label = f"SmallCNN (GroupNorm after the first conv), trained, {baseline} baseline"
            cases.append((label, state.model.eval(), xs, baseline))
        for label, model, xs, baseline in cases:
            x = xs[: args.samples]
            print(f"== {label}: {x.shape[0]} examples, {device}")
            print(
                f"{'method':<14}{'evals/example':>15}{'ms/example':>12}"
                f"{'err median':>12}{'p90':>10}{'max':>10}{'unconverged':>13}"
            )
            for method, kw in (
                ("saliency", {}),
                ("smoothgrad", {}),
                ("ig", {}),
                ("ig", {"n_steps": 50}),
                ("ig", {"n_steps": 300}),
            ):
                t0 = time.perf_counter()
                e = explain(
                    model,
                    x,
                    method=method,
                    sanity=False,
                    faithfulness=False,
                    baseline=baseline,
                    **kw,
                )
                if device == "cuda":
                    torch.cuda.synchronize()
                ms = 1000 * (time.perf_counter() - t0) / x.shape[0]
                name = method + (f"-{kw['n_steps']}" if kw else ("-auto" if method == "ig" else ""))
                row = f"{name:<14}{statistics.mean(e.evaluations):>15.1f}{ms:>12.2f}"
                if e.completeness:
                    err = e.completeness["relative_error"]
                    row += (
                        f"{statistics.median(err):>12.1e}{_q(err, 0.9):>10.1e}"
                        f"{max(err):>10.1e}{len(e.unconverged):>13}"
                    )
                print(row)
            s = explain(model, x[:8], method="ig", faithfulness=False, baseline=baseline)
            f = explain(model, x[:8], method="ig", sanity=False, baseline=baseline)
            print(
                f"ig sanity (first 4): {s.seconds:.2f} s, final Spearman |a| "
                f"{s.sanity.final_abs:.2f}; faithfulness (8): {f.seconds:.2f} s, deletion "
                f"AUC {f.faithfulness['auc']:.2f} vs random {f.faithfulness['random_auc']:.2f}"
            )


if __name__ == "__main__":
    main()
