"""``gradoctor explain``: what a recipe's model looks at, for its first N examples.

The model is the recipe's (``build_state``: its components and seed; activation
checkpointing undone, which changes no value), with the weights of ``checkpoint`` (a run
folder or checkpoint file) when given — otherwise the fresh model, with a warning that an
untrained model is being explained. It is put in eval mode (dropout off, BatchNorm's running
statistics) and explained in fp32 unless ``precision`` asks for the recipe's autocast. The
examples are the first ``samples`` of the recipe's data, in order: a ``(inputs, targets)``
batch gives ``inputs``; a dict batch its ``input_ids`` (or its first tensor), passed to the
model by that keyword. Each method of ``methods`` runs through ``api.explain`` on all of them
at once.

Outputs in ``out`` (default ``<output.dir>/explain``): ``NNN_<method>.png`` (input, heatmap,
overlay; bars for vectors and tokens), ``NNN_<method>.pt`` (the example's attributions),
TensorBoard figures (``tensorboard/``, tag ``explain/<method>/NNN``) and ``explain.json``
(``ExplainResult.to_dict()``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradoctor.attribution.api import METHODS, Explanation, explain
from gradoctor.attribution.baselines import KINDS
from gradoctor.attribution.figures import figure, kind_of, save_png
from gradoctor.devices import pick_device
from gradoctor.errors import UsageError
from gradoctor.recipe import Recipe, command_options, load_command_recipe
from gradoctor.sinks.report_json import check_json_target, write_json_atomic, write_json_output
from gradoctor.training.batches import to_device
from gradoctor.training.build import build_state
from gradoctor.training.checkpoint_io import find_checkpoint, load_checkpoint


@dataclass(frozen=True)
class ExplainOptions:
    """``method``: saliency | smoothgrad | ig | all; ``target``: ``"auto"`` (the predicted
    class) or an output index; the rest as ``api.explain``."""

    checkpoint: Path | None = None
    method: str = "all"
    samples: int = 8
    target: str | int = "auto"
    baseline: str = "zero"
    tolerance: float = 0.01
    max_steps: int = 512
    smoothgrad_samples: int = 25
    noise: float = 0.15
    sanity: bool = True
    precision: bool = False
    out: Path | None = None


@dataclass
class ExplainResult:
    """``examples``: [{index, target, prediction, methods: {method: {attribution_file,
    figure, n_steps, completeness, top_features, token_scores?}}}]; ``sanity``,
    ``faithfulness``: per method; ``model_source``: checkpoint | fresh."""

    examples: list[dict[str, Any]]
    sanity: dict[str, Any]
    faithfulness: dict[str, Any]
    model_source: str
    recipe: str
    device: str
    out: str
    precision: str
    explanations: dict[str, Explanation] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unconverged(self) -> list[int]:
        ig = self.explanations.get("ig")
        return [self.examples[i]["index"] for i in ig.unconverged] if ig is not None else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "sanity": self.sanity,
            "faithfulness": self.faithfulness,
            "model_source": self.model_source,
            "recipe": self.recipe,
            "device": self.device,
            "out": self.out,
            "precision": self.precision,
            "methods": {m: e.to_dict() for m, e in self.explanations.items()},
            "notes": self.notes,
            "seconds": self.seconds,
        }


def explain_recipe(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    **options: Any,
) -> ExplainResult:
    """``gradoctor explain``'s API (module docstring); ``options`` are ``ExplainOptions``
    fields. Silent. Raises UsageError, RecipeError, UserCodeError."""
    if json_path is not None:
        check_json_target(Path(json_path))
    opts = command_options(ExplainOptions, options, "explain")
    if opts.method not in (*METHODS, "all"):
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, all; got {opts.method!r}")
    if opts.baseline not in KINDS:
        raise UsageError(f"--baseline must be one of {', '.join(KINDS)}; got {opts.baseline!r}")
    if opts.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {opts.samples}")
    loaded = load_command_recipe(recipe, overrides, "explain")
    result = run_explain(loaded, opts)
    if json_path is not None:
        write_json_output(Path(json_path), result.to_dict())
    return result


def _inputs(batch: Any) -> tuple[torch.Tensor, str | None]:
    """The tensor to explain and, for a dict batch, the keyword it goes in by."""
    if isinstance(batch, (list, tuple)):
        return batch[0], None
    if isinstance(batch, dict):
        key = (
            "input_ids"
            if "input_ids" in batch
            else next(k for k, v in batch.items() if isinstance(v, torch.Tensor))
        )
        return batch[key], key
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise UsageError(
        f"cannot find the inputs in a {type(batch).__name__} batch",
        hint="yield (inputs, targets), a dict with input_ids, or a tensor",
    )


def _first_examples(
    state: Any, count: int, device: torch.device
) -> tuple[torch.Tensor, str | None]:
    parts, key, have = [], None, 0
    for _ in range(10_000):
        x, key = _inputs(state.data.next())
        parts.append(x)
        have += x.shape[0]
        if have >= count or state.data.epoch > 0:
            break
    x = torch.cat(parts)[:count]
    return to_device(x, device), key


def run_explain(recipe: Recipe, opts: ExplainOptions) -> ExplainResult:
    """The explanation of an already loaded recipe (module docstring)."""
    t0 = time.perf_counter()
    device = pick_device(recipe.train.device)
    state, undo = build_state(recipe, device)
    undo()
    notes: list[str] = []
    source = "fresh"
    if opts.checkpoint is not None:
        state.load_state_dict(load_checkpoint(Path(opts.checkpoint)))
        source = "checkpoint"
        where = str(find_checkpoint(Path(opts.checkpoint)))
    else:
        where = "the recipe's fresh model"
        notes.append(
            "no --checkpoint: explaining an untrained model (its initial weights); "
            "pass --checkpoint RUN_DIR for the trained one"
        )
    model = state.model.eval()
    x, key = _first_examples(state, opts.samples, device)
    forward = (lambda m, inp: m(**{key: inp})) if key is not None else None
    target = None if opts.target == "auto" else int(opts.target)
    methods = METHODS if opts.method == "all" else (opts.method,)
    precision = recipe.precision if opts.precision and recipe.precision != "fp32" else None
    out = Path(opts.out) if opts.out is not None else recipe.output_dir() / "explain"
    out.mkdir(parents=True, exist_ok=True)
    explanations: dict[str, Explanation] = {}
    for method in methods:
        explanations[method] = explain(
            model,
            x,
            target=target,
            method=method,
            baseline=opts.baseline,
            tolerance=opts.tolerance,
            samples=opts.smoothgrad_samples,
            noise=opts.noise,
            forward=forward,
            max_steps=opts.max_steps,
            sanity=opts.sanity,
            precision=precision,
            seed=recipe.train.seed,
        )
    with torch.no_grad():
        from gradoctor.attribution.scalar import logits_of

        scores = logits_of(model, x, forward)
    predictions = scores.argmax(1).tolist() if scores.dim() == 2 else [None] * x.shape[0]
    examples = _write(
        out, x, key is not None or not x.is_floating_point(), explanations, predictions
    )
    if source == "fresh":
        notes.append(f"model: {where}")
    result = ExplainResult(
        examples=examples,
        sanity={m: e.sanity.to_dict() for m, e in explanations.items() if e.sanity is not None},
        faithfulness={m: e.faithfulness for m, e in explanations.items() if e.faithfulness},
        model_source=source,
        recipe=recipe.source or recipe.name,
        device=str(device),
        out=str(out),
        precision=precision or "fp32",
        explanations=explanations,
        notes=notes + [n for e in explanations.values() for n in e.notes] + _limits(explanations),
        seconds=round(time.perf_counter() - t0, 3),
    )
    write_json_atomic(out / "explain.json", result.to_dict(), default=str, allow_nan=True)
    return result


def _top(values: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    flat = values.reshape(-1).float()
    idx = flat.abs().argsort(descending=True)[:k]
    shape = tuple(values.shape)
    return [
        {
            "index": [int(v) for v in torch.unravel_index(i, shape)]
            if len(shape) > 1
            else [int(i)],
            "value": float(flat[i]),
        }
        for i in idx
    ]


def _write(
    out: Path,
    x: torch.Tensor,
    tokens: bool,
    explanations: dict[str, Explanation],
    predictions: list[Any],
) -> list[dict[str, Any]]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    examples = []
    try:
        for i in range(x.shape[0]):
            entry: dict[str, Any] = {"index": i, "prediction": predictions[i], "methods": {}}
            for method, e in explanations.items():
                entry["target"] = int(e.target[i]) if e.target is not None else None
                a = e.attributions[i].detach().cpu()
                shown = e.token_scores[i].cpu() if e.token_scores is not None else a
                pt = out / f"{i:03d}_{method}.pt"
                torch.save(a, pt)
                labels = [f"t{int(t)}" for t in x[i].reshape(-1)] if tokens else None
                fig = figure(
                    x[i].cpu() if not tokens else x[i].cpu(),
                    shown,
                    kind_of(x[i], tokens),
                    f"example {i} · {method} · target {entry['target']}",
                    labels,
                )
                writer.add_figure(f"explain/{method}/{i:03d}", fig, close=False)
                png = out / f"{i:03d}_{method}.png"
                save_png(fig, png)
                m: dict[str, Any] = {
                    "attribution_file": str(pt),
                    "figure": str(png),
                    "n_steps": e.n_steps[i] if e.n_steps else None,
                    "completeness": (
                        {k: v[i] for k, v in e.completeness.items()} if e.completeness else None
                    ),
                    "top_features": _top(shown),
                }
                if e.token_scores is not None:
                    m["token_scores"] = [
                        {"position": j, "token": int(t), "score": float(s)}
                        for j, (t, s) in enumerate(zip(x[i].tolist(), e.token_scores[i].tolist()))
                    ]
                if e.stderr is not None:
                    m["stderr_mean"] = float(e.stderr[i].mean())
                entry["methods"][method] = m
            examples.append(entry)
    finally:
        writer.close()
    return examples


def _limits(explanations: dict[str, Explanation]) -> list[str]:
    """The seed's limits, stated where the numbers show them."""
    notes = []
    sal, ig = explanations.get("saliency"), explanations.get("ig")
    if sal is not None and ig is not None:
        s = sal.attributions.reshape(sal.attributions.shape[0], -1).abs().sum(1)
        g = ig.attributions.reshape(ig.attributions.shape[0], -1).abs().sum(1)
        flat = [i for i in range(len(s)) if float(s[i]) < 1e-3 * max(float(g[i]), 1e-30)]
        if flat:
            notes.append(
                f"example(s) {flat}: the input gradient is ~0 but Integrated Gradients is not — "
                "the model is saturated there; gradients are local, a path integral is not"
            )
    for method, e in explanations.items():
        if e.sanity is not None and not e.sanity.passed:
            notes.append(
                f"{method}: after every weight was randomised its map still correlates "
                f"{e.sanity.final_abs:.2f} (Spearman of |a|) with the explained model's: it does "
                "not explain what the model learned"
            )
        if e.sanity is not None and e.sanity.edge_detector:
            notes.append(
                f"{method}: |attributions| follow |input| (Spearman {e.sanity.input_spearman:.2f}):"
                " the map may be an edge detector rather than the model's reasoning"
            )
    notes.append(
        "attributions explain this model's output for these inputs; they are not "
        "causal effects in the data, and another baseline asks another question"
    )
    return notes


__all__ = ["ExplainOptions", "ExplainResult", "explain_recipe", "run_explain"]
