"""The gradoctor command line: argument parsing and one call into the library per command.

Exit codes (documented in the README): 0 success; 1 the run failed (your code raised) or
check-grads found a wrong gradient; 2 bad recipe or usage; 3 diagnoses at or above
``--fail-on`` (``repro``: the runs differ; ``explain``: an example's Integrated Gradients
missed its completeness tolerance at the step cap); 4 out of memory; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from gradoctor.errors import GradoctorError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A doctor for PyTorch training.")
T = TypeVar("T")


def _print_version(value: bool) -> None:
    if value:
        from gradoctor.version import __version__  # the base layer: no torch import

        typer.echo(f"gradoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A doctor for PyTorch training."""


def _run(call: Callable[[], T]) -> T:
    """The one place where library errors become a message and an exit code."""
    try:
        return call()
    except GradoctorError as exc:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None


class FailOn(str, Enum):
    never = "never"
    warning = "warning"
    error = "error"


OptionalRecipe = Annotated[
    str | None, typer.Argument(help="The YAML recipe (default ./recipe.yaml).")
]
JsonPath = Annotated[
    Path | None, typer.Option("--json", help="Also write the result as JSON here.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Recipe overrides, key.sub=value (e.g. train.steps=50).", show_default=False
    ),
]


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")],
    overrides: Overrides = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from a run folder (or its checkpoint.pt).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace a previous run's outputs in output.dir (refused without it, exit 2)."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or report.")
    ] = False,
    fail_on: Annotated[
        FailOn, typer.Option(help="Exit 3 when diagnoses at or above this severity exist (for CI).")
    ] = FailOn.never,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            help="Train on N local processes through torchrun (DDP unless the recipe says fsdp)."
        ),
    ] = None,
) -> None:
    """Train a recipe with instruments; writes report.json, TensorBoard events and a checkpoint."""
    if nproc_per_node is not None:
        from gradoctor.launch import launch

        code = _run(
            lambda: launch(
                recipe,
                nproc_per_node,
                overrides or [],
                resume=resume,
                overwrite=overwrite,
                quiet=quiet,
                fail_on=fail_on.value,
            )
        )
        if code:
            raise typer.Exit(code)
        return
    from gradoctor.api import train as train_api
    from gradoctor.diagnose.types import at_or_above
    from gradoctor.report.console import ConsoleReporter
    from gradoctor.training.progress import Reporter

    reporter = Reporter() if quiet else ConsoleReporter()
    result = _run(
        lambda: train_api(
            recipe,
            resume=resume,
            overwrite=overwrite,
            reporter=reporter,
            cli_overrides=overrides or [],
        )
    )
    if at_or_above(result.diagnoses, fail_on.value):
        raise typer.Exit(3)


def _recipe_and_overrides(
    recipe: str | None, overrides: list[str] | None
) -> tuple[str | None, list[str] | None]:
    """RECIPE is optional (./recipe.yaml): a first argument with '=' is an override."""
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        return None, [recipe, *(overrides or [])]
    return recipe, overrides


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")], overrides: Overrides = None
) -> None:
    """Check a recipe without training: every problem at once, with key paths and lines."""
    from gradoctor.api import validate as validate_api

    loaded = _run(lambda: validate_api(recipe, overrides or []))
    Console().print(
        f"[green]ok[/] {recipe}: model {loaded.model.target}, data {loaded.data.target}, {loaded.precision}, {loaded.train.steps} steps"
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `gradoctor train`.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of the table.")
    ] = False,
) -> None:
    """Re-render a saved run's report."""
    from gradoctor.api import load_report
    from gradoctor.report.console import render_summary

    result = _run(lambda: load_report(run_dir))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render_summary(result, Console(), run_dir=run_dir)


@app.command("check-grads")
def check_grads(
    layer_file: Annotated[Path, typer.Argument(help="Python file with the layers to check.")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write per-case, per-check results here.")
    ] = None,
    case: Annotated[
        list[str] | None, typer.Option("--case", help="Only this case (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for example inputs and probes.")] = 0,
    fast: Annotated[
        bool, typer.Option("--fast", help="Probes instead of full Jacobians; one probe each.")
    ] = False,
) -> None:
    """Check a custom layer's gradients: first and second order, contexts, ranges, precision."""
    from gradoctor.gradcheck.api import check_file
    from gradoctor.report.gradcheck_console import render_report

    report = _run(
        lambda: check_file(layer_file, cases=case, seed=seed, fast=fast, json_path=json_path)
    )
    render_report(report, Console())
    if not report.passed:
        raise typer.Exit(1)


@app.command("memory-profile")
def memory_profile(
    recipe: OptionalRecipe = None,
    overrides: Overrides = None,
    batch_sizes: Annotated[
        str | None,
        typer.Option(help="What-if micro-batch sizes, e.g. 8,16,32 (default: 0.5x, 1x, 2x)."),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Memory to plan for, e.g. 10GiB or 512MB (default: the GPU's)."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the profile as JSON here.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Steady-state steps measured (max taken).")] = 1,
    check: Annotated[
        bool, typer.Option(help="Run each what-if configuration once: predicted vs measured.")
    ] = True,
    snapshot: Annotated[
        Path | None,
        typer.Option(help="CUDA: write a memory snapshot of one step (pytorch.org/memory_viz)."),
    ] = None,
) -> None:
    """Where a recipe's training memory goes, what-ifs, and a checkpoint plan that fits."""
    from gradoctor.memory.api import memory_profile as profile_api
    from gradoctor.report.memory_console import render_memory_profile

    recipe, overrides = _recipe_and_overrides(recipe, overrides)
    result = _run(
        lambda: profile_api(
            recipe,
            batch_sizes=batch_sizes,
            budget=budget,
            steps=steps,
            check=check,
            snapshot=snapshot,
            overrides=overrides or None,
            json_path=json_path,
        )
    )
    render_memory_profile(result, Console())


@app.command()
def curvature(
    recipe: OptionalRecipe = None,
    overrides: Overrides = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A run folder or checkpoint.pt (default: the model as initialised)."),
    ] = None,
    batches: Annotated[
        str, typer.Option(help="How many of the run's first batches, or 'all' (one epoch).")
    ] = "4",
    top_k: Annotated[int, typer.Option(help="How many of the largest eigenvalues.")] = 1,
    trace: Annotated[bool, typer.Option("--trace", help="Estimate the trace (Hutch++).")] = False,
    density: Annotated[
        bool, typer.Option("--density", help="Spectral density (stochastic Lanczos quadrature).")
    ] = False,
    per_layer: Annotated[
        bool, typer.Option("--per-layer", help="Top eigenvalue and trace of each module's block.")
    ] = False,
    json_path: JsonPath = None,
) -> None:
    """Hessian spectrum of a recipe's loss, and its learning rate's stability limit."""
    from gradoctor.hessian.recipe_curvature import curvature as curvature_api
    from gradoctor.report.curvature_console import render_curvature

    recipe, overrides = _recipe_and_overrides(recipe, overrides)
    result = _run(
        lambda: curvature_api(
            recipe,
            overrides=overrides or None,
            json_path=json_path,
            checkpoint=checkpoint,
            batches=batches,
            top_k=top_k,
            trace=trace,
            density=density,
            per_layer=per_layer,
        )
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun: every rank has the result
        render_curvature(result, Console())


@app.command()
def explain(
    recipe: OptionalRecipe = None,
    overrides: Overrides = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A run folder or checkpoint.pt (default: the recipe's fresh model)."),
    ] = None,
    method: Annotated[str, typer.Option(help="saliency | smoothgrad | ig | all")] = "all",
    samples: Annotated[int, typer.Option(help="How many of the data's first examples.")] = 8,
    target: Annotated[str, typer.Option(help="auto (the predicted class) or an index.")] = "auto",
    baseline: Annotated[
        str, typer.Option(help="IG's baseline: zero | mean | blur | uniform | noise")
    ] = "zero",
    tolerance: Annotated[
        float, typer.Option(help="IG completeness: |Σa - (F(x) - F(x'))| / |F(x) - F(x')|.")
    ] = 0.01,
    max_steps: Annotated[int, typer.Option(help="IG's step cap (doubling from 8).")] = 512,
    sanity: Annotated[bool, typer.Option(help="Cascading randomisation sanity check.")] = True,
    precision: Annotated[
        bool, typer.Option("--precision", help="Use the recipe's autocast (default fp32).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default <output.dir>/explain).")
    ] = None,
    json_path: JsonPath = None,
) -> None:
    """What the model looks at: saliency, SmoothGrad, Integrated Gradients, checked."""
    from gradoctor.attribution.recipe_explain import explain_recipe
    from gradoctor.report.explain_console import render_explain

    if target != "auto" and not target.lstrip("-").isdigit():
        _run(lambda: _usage(f"--target must be auto or an integer, got {target!r}"))
    recipe, overrides = _recipe_and_overrides(recipe, overrides)
    result = _run(
        lambda: explain_recipe(
            recipe,
            overrides=overrides or None,
            json_path=json_path,
            checkpoint=checkpoint,
            method=method,
            samples=samples,
            target=target if target == "auto" else int(target),
            baseline=baseline,
            tolerance=tolerance,
            max_steps=max_steps,
            sanity=sanity,
            precision=precision,
            out=out,
        )
    )
    render_explain(result, Console())
    if result.unconverged:
        raise typer.Exit(3)


def _usage(message: str) -> None:
    from gradoctor.errors import UsageError

    raise UsageError(message)


@app.command()
def audit(
    recipe: OptionalRecipe = None,
    overrides: Overrides = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps to audit.")] = 2,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Target precision to audit against fp32: bf16 | fp16 (default: the recipe's)."
        ),
    ] = None,
    json_path: JsonPath = None,
    fail_on: Annotated[
        FailOn, typer.Option(help="Exit 3 when findings at or above this severity exist.")
    ] = FailOn.never,
) -> None:
    """Find unstable numerics and precision-sensitive layers before anything goes NaN."""
    from gradoctor.numerics.api import audit as audit_api
    from gradoctor.report.audit_console import render_audit

    recipe, overrides = _recipe_and_overrides(recipe, overrides)
    result = _run(
        lambda: audit_api(
            recipe,
            overrides=overrides or None,
            json_path=json_path,
            steps=steps,
            precision=precision,
        )
    )
    render_audit(result, Console())
    if result.at_or_above(fail_on.value):
        raise typer.Exit(3)


@app.command()
def repro(
    recipe: OptionalRecipe = None,
    overrides: Overrides = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps to run twice.")] = 3,
    deterministic_check: Annotated[
        bool,
        typer.Option(help="When the runs differ, re-run them in deterministic mode."),
    ] = True,
    json_path: JsonPath = None,
) -> None:
    """Run the first steps twice in two processes; name the first op that makes them differ."""
    from gradoctor.report.repro_console import render_repro
    from gradoctor.reproducibility.api import repro as repro_api

    recipe, overrides = _recipe_and_overrides(recipe, overrides)
    result = _run(
        lambda: repro_api(
            recipe,
            overrides=overrides or None,
            steps=steps,
            deterministic_check=deterministic_check,
            json_path=json_path,
        )
    )
    render_repro(result, Console())
    if not result.reproducible:
        raise typer.Exit(3)


@app.command("repro-worker", hidden=True)
def repro_worker(spec: Path, out: Path) -> None:
    """One recorded run of `gradoctor repro` (started by it, in its own process)."""
    from gradoctor.reproducibility.worker import run_worker

    _run(lambda: run_worker(spec, out))


def main() -> Any:
    return app()


if __name__ == "__main__":
    main()
