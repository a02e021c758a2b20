"""Terminal rendering of a :class:`~gradoctor.hessian.result.CurvatureResult` (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradoctor.hessian.result import CurvatureResult

_BARS = " ▁▂▃▄▅▆▇█"


def render_curvature(r: CurvatureResult, console: Console) -> None:
    """Eigenvalues with residuals, trace, stability verdict, per-layer table, density, cost."""
    console.print(
        f"[bold]curvature[/] {escape(r.recipe or '')} on {r.device or '?'}: Hessian of the mean "
        f"loss over {r.batches} batch(es), {r.parameters:,} parameters, {r.precision}, "
        f"HVPs by {r.hvp_method}"
        + (f" [dim](fallback: {escape(r.fallback)})[/]" if r.fallback else "")
    )
    table = Table(title="Top eigenvalues", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("eigenvalue", justify="right")
    table.add_column("residual ‖Hv−λv‖/|λ|", justify="right")
    for i, (lam, res) in enumerate(zip(r.eigenvalues, r.residuals), start=1):
        table.add_row(f"λ{i}", f"{lam:.6g}", f"{res:.1e}")
    console.print(table)
    if r.trace is not None:
        t = r.trace
        console.print(
            f"trace: [bold]{t.estimate:.6g}[/] ± {1.96 * t.stderr:.3g} (95%; {t.method}, "
            f"{t.samples} samples)"
        )
    _stability(r.stability, console)
    if r.per_layer:
        layers = Table(
            title="Per-layer blocks (each module's own parameters)", title_justify="left"
        )
        layers.add_column("module")
        layers.add_column("params", justify="right")
        layers.add_column("top eigenvalue", justify="right")
        layers.add_column("trace", justify="right")
        for name, layer in r.per_layer.items():
            layers.add_row(
                escape(name), f"{layer.params:,}", f"{layer.eigenvalue:.4g}", f"{layer.trace:.4g}"
            )
        console.print(layers)
    if r.density is not None:
        d = r.density
        top = max(float(v) for v in d.values) or 1.0
        step = max(1, len(d.values) // 60)
        bars = "".join(_BARS[min(8, int(round(8 * float(v) / top)))] for v in d.values[::step])
        console.print(
            f"spectral density ({d.lanczos_steps} Lanczos steps x {d.probes} probes): "
            f"{float(d.grid[0]):.3g} [{bars}] {float(d.grid[-1]):.3g}"
        )
    console.print(
        f"cost: {r.hvps} Hessian-vector products"
        + (f", {r.seconds:.1f} s" if r.seconds is not None else "")
    )
    for note in r.notes:
        console.print(f"[dim]note: {escape(note)}[/]")


def _stability(s: Any, console: Console) -> None:
    if not s:
        return
    if s.get("threshold") is None:
        console.print(f"stability: {escape(s['rule'])}")
        return
    head = f"stability at lr {s['lr']:.3g}: threshold {s['threshold']:.4g} = {escape(s['rule'])}"
    if s.get("sharpness") is None:
        console.print(head)
        if s.get("note"):
            console.print(f"  [yellow]{escape(s['note'])}[/]")
        return
    ratio = s["ratio"]
    which = "λmax(P⁻¹H)" if s.get("preconditioned") else "λmax(H)"
    verdict = (
        "[red]past the stability limit[/]"
        if ratio >= 1
        else "[yellow]near the stability limit[/]"
        if ratio >= 0.8
        else "[green]below the stability limit[/]"
    )
    console.print(head)
    line = f"  sharpness {which} = {s['sharpness']:.4g}, {ratio:.2f}x the threshold: {verdict}"
    if s.get("max_stable_lr") is not None:
        line += f"; largest stable lr ≈ {s['max_stable_lr']:.3g}"
    console.print(line)


__all__ = ["render_curvature"]
