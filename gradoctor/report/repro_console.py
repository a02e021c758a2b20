"""Terminal rendering of a :class:`~gradoctor.reproducibility.result.ReproResult` (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from gradoctor.reproducibility.compare import Divergence
from gradoctor.reproducibility.result import ReproResult


def _divergence(d: Divergence, console: Console, indent: str = "  ") -> None:
    size = f"max |Δ| = {d.max_abs_diff:.3g}" if d.max_abs_diff is not None else "size not measured"
    if d.kind != "value":
        size = f"op {d.kind} in run 2"
    console.print(
        f"{indent}first divergence: step {d.step}, {d.phase}, module [bold]{escape(d.module)}[/], "
        f"op [bold]{escape(d.op)}[/] ({size})",
        highlight=False,
    )
    console.print(f"{indent}[bold]cause[/] ({d.cause_code}): {escape(d.cause)}", highlight=False)
    console.print(f"{indent}[bold]fix[/]: {escape(d.fix)}", highlight=False)
    if d.evidence.get("recurred") is False:
        console.print(f"{indent}[dim]the difference did not recur in the capture re-run[/]")


def render_repro(r: ReproResult, console: Console) -> None:
    """The verdict, the first divergence with its cause and fix, and deterministic mode."""
    runs = f"{r.steps} step(s) run twice in separate processes on {r.device}"
    if r.reproducible:
        console.print(
            f"[bold green]reproducible[/] {escape(r.recipe)}: {runs}; all {r.ops[0]:,} recorded "
            f"ops bitwise identical [dim]({r.seconds:.1f} s)[/]",
            highlight=False,
        )
        return
    console.print(
        f"[bold red]not reproducible[/] {escape(r.recipe)}: {runs} [dim]({r.seconds:.1f} s)[/]",
        highlight=False,
    )
    assert r.first_divergence is not None
    _divergence(r.first_divergence, console)
    det = r.deterministic_mode
    if det is None:
        return
    if det.error:
        console.print(f"  deterministic mode: raises — {escape(det.error)}", highlight=False)
    elif det.reproducible:
        console.print(
            f"  deterministic mode ([bold]train.deterministic: true[/]): [green]reproducible[/], "
            f"step time x{det.time_ratio:.2f}",
            highlight=False,
        )
    else:
        console.print(
            f"  deterministic mode: [red]still not reproducible[/] (step time "
            f"x{det.time_ratio:.2f});",
            highlight=False,
        )
        d, first = det.first_divergence, r.first_divergence
        if d is not None and (d.step, d.phase, d.module, d.op) == (
            first.step,
            first.phase,
            first.module,
            first.op,
        ):
            console.print("    at the same op, for the same reason", highlight=False)
        elif d is not None:
            _divergence(d, console, indent="    ")
