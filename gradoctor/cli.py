"""The gradoctor command line: argument parsing and one call into the library per command.

Exit codes (documented in the README): 0 success; 1 the run failed (your code raised);
2 bad recipe or usage; 4 out of memory; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from gradoctor.errors import GradoctorError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A doctor for PyTorch training.")
T = TypeVar("T")


def _run(call: Callable[[], T]) -> T:
    """The one place where library errors become a message and an exit code."""
    try:
        return call()
    except GradoctorError as exc:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None


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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
) -> None:
    """Train a recipe with instruments; writes report.json, TensorBoard events and a checkpoint."""
    from gradoctor.api import train as train_api
    from gradoctor.report.base import Reporter
    from gradoctor.report.console import ConsoleReporter

    reporter = Reporter() if quiet else ConsoleReporter()
    _run(lambda: train_api(recipe, resume=resume, reporter=reporter, cli_overrides=overrides or []))


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
        render_summary(result, Console())


def main() -> Any:
    return app()


if __name__ == "__main__":
    main()
