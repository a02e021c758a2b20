"""Terminal rendering of an :class:`~gradoctor.numerics.result.AuditResult` (rich): one block
per finding (what, where, evidence, fix; it wraps at any width), then the precision table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradoctor.numerics.result import AuditResult

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _db(v: float | None) -> str:
    if v is None:
        return "-"
    return "equal" if v == float("inf") else f"{v:.1f}"


def _evidence(ev: dict[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, dict):
            parts.append(
                f"{k}="
                + ",".join(
                    f"{a}:{b:.4g}" if isinstance(b, float) else f"{a}:{b}" for a, b in v.items()
                )
            )
        else:
            parts.append(f"{k}={v}")
    return " · ".join(parts)


def render_audit(r: AuditResult, console: Console) -> None:
    """Verdict, findings (errors first), precision table, keep-list and its verification."""
    rec = r.recipe
    target = f", target {rec['target']}" if rec.get("target") else ""
    counts = {s: sum(f.severity == s for f in r.findings) for s in ("error", "warning", "info")}
    console.print(
        f"[bold]audit[/] {escape(str(rec.get('source') or rec.get('name')))} on {rec['device']}: "
        f"{r.steps} step(s), {rec['precision']}{target}, {r.ops:,} forward ops watched "
        f"[dim]({r.seconds:.1f} s)[/] — {counts['error']} error(s), {counts['warning']} "
        f"warning(s), {counts['info']} info",
        highlight=False,
    )
    for f in r.findings:
        style = SEVERITY_STYLE[f.severity]
        steps = ", ".join(str(s) for s in f.steps[:4]) + (" …" if len(f.steps) > 4 else "")
        console.print(
            f"[{style}]{f.severity}[/] [bold]{f.code}[/] in [bold]{escape(f.module)}[/] "
            f"({escape(f.op)}, {f.phase}, step {steps}; seen {f.occurrences}x)",
            highlight=False,
        )
        console.print(f"  {escape(f.message)}", highlight=False)
        console.print(f"  [dim]{escape(_evidence(f.evidence))}[/]", highlight=False)
        console.print(f"  fix: {escape(f.fix)}", highlight=False)
    if not r.findings:
        console.print("[green]no unstable pattern found[/]")
    p = r.precision
    if p is not None:
        console.print(
            f"[bold]precision[/] {p.reference} vs {p.target}: loss drift {p.loss_drift:.2e}, "
            f"gradient SQNR {_db(p.grad_sqnr_db)} dB (SQNR = 10·log10(Σref²/Σ(ref−x)²); "
            "local: the module alone on the reference's inputs)",
            highlight=False,
        )
        table = Table(title_justify="left")
        table.add_column("module (worst local first)", overflow="fold", ratio=3)
        table.add_column("local dB", justify="right", no_wrap=True)
        table.add_column("output dB", justify="right", no_wrap=True)
        table.add_column("grad dB", justify="right", no_wrap=True)
        for m in p.modules[:12]:
            table.add_row(
                f"{escape(m.name)} [dim]{escape(m.type)}[/]",
                _db(m.local_activation_sqnr_db),
                _db(m.activation_sqnr_db),
                _db(m.grad_sqnr_db),
            )
        console.print(table)
        v = p.keep_fp32_verified or {}
        if p.keep_fp32:
            after = v.get("after") or {}
            console.print(
                f"keep in fp32: [bold]{escape(', '.join(p.keep_fp32))}[/] — loss drift "
                f"{v['before']['loss_drift']:.2e} → {after.get('loss_drift', float('nan')):.2e}, "
                f"gradient SQNR {_db(v['before']['grad_sqnr_db'])} → "
                f"{_db(after.get('grad_sqnr_db'))} dB "
                + (
                    "[green](within tolerance)[/]"
                    if v.get("within_tolerance")
                    else "[red](still above the tolerance)[/]"
                ),
                highlight=False,
            )
        for note in p.notes:
            console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
        if p.low_precision_ops:
            ops = ", ".join(
                f"{o['op'].removeprefix('aten.')} in {o['module']} x{o['count']}"
                for o in p.low_precision_ops[:6]
            )
            console.print(
                f"[dim]sensitive ops autocast runs in {p.target}: {escape(ops)}[/]", highlight=False
            )
    for note in r.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
