"""Terminal output of ``gradoctor check-grads`` (rich): one table per case, then the
located mismatches of each failing check, side by side (analytic | numeric)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradoctor.gradcheck.result import FAIL, NOTE, PASS, CaseResult, GradCheckReport

_STYLE = {PASS: "green", FAIL: "bold red", NOTE: "yellow", "skip": "dim"}


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _idx(index: tuple[int, ...] | None) -> str:
    return "" if index is None else "[" + ", ".join(map(str, index)) + "]"


def render_case(case: CaseResult, console: Console) -> None:
    verdict = "[green]pass[/]" if case.passed else "[bold red]FAIL[/]"
    table = Table(
        title=f"{escape(case.name)} · {verdict} · {case.seconds:.2f} s", title_justify="left"
    )
    table.add_column("check")
    table.add_column("status")
    table.add_column("worst rel err", justify="right")
    table.add_column("details")
    for c in case.checks:
        details = escape(c.message)
        if c.pattern:
            details = f"[bold]{escape(c.pattern)}[/] · " + details
        if c.mismatches:
            details += "\n" + escape(c.mismatches[0].describe())
        table.add_row(
            c.name, f"[{_STYLE.get(c.status, '')}]{c.status}[/]", _err(c.max_rel_error), details
        )
    console.print(table)
    for k, c in enumerate(case.failures):
        if len(c.mismatches) > 1 and k == 0:  # the first failure's table; the rest in --json
            mm = Table(
                title=f"{escape(case.name)} · {c.name}: top mismatches", title_justify="left"
            )
            for col in ("input", "element", "output", "element", "analytic", "numeric", "context"):
                mm.add_column(col, justify="right" if col in ("analytic", "numeric") else "left")
            for m in c.mismatches:
                mm.add_row(
                    escape(m.input),
                    _idx(m.input_index),
                    escape(m.output),
                    _idx(m.output_index),
                    *m.formatted(),
                    escape(m.context),
                )
            console.print(mm)
        for note in c.notes:
            if note:
                console.print(f"  [dim]{escape(note)}[/]", highlight=False)


def render_report(report: GradCheckReport, console: Console) -> None:
    """Every case, then one summary line."""
    for case in report.cases:
        render_case(case, console)
    failed = [c.name for c in report.cases if not c.passed]
    total = len(report.cases)
    if failed:
        console.print(
            f"[bold red]{len(failed)} of {total} case(s) failed:[/] {escape(', '.join(failed))}"
        )
    else:
        console.print(f"[green]all {total} case(s) pass[/]")
