"""The triage report in the terminal: verdict, ranked diagnoses, gradient flow, loss, loss scale.

Pure rendering of a report dict (``TrainResult.to_dict()``), so ``gradoctor report RUN_DIR``
draws exactly what ``gradoctor train`` drew.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from gradoctor.diagnose.types import ranked
from gradoctor.memory.units import format_bytes
from gradoctor.training.history import decode_float

BARS = "▁▂▃▄▅▆▇█"
HEAT = [
    "#313695",
    "#4575b4",
    "#74add1",
    "#abd9e9",
    "#fee090",
    "#fdae61",
    "#f46d43",
    "#d73027",
    "#a50026",
]
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _bins(n: int, width: int) -> list[range]:
    """Split ``n`` points into at most ``width`` contiguous column bins."""
    if n == 0:
        return []
    edges = np.linspace(0, n, min(n, width) + 1).astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def sparkline(values: list[Any], width: int = 60, log: bool | None = None) -> Text:
    """One character per column; '×' where a column holds a NaN/Inf."""
    v = np.asarray([decode_float(x) for x in values], dtype=np.float64)
    text = Text()
    finite = v[np.isfinite(v)]
    if not finite.size:
        return Text("×" * min(len(v), width), style="bold red")
    if log is None:
        log = bool(finite.min() > 0 and finite.max() / finite.min() > 100)
    t = np.where(np.isfinite(v), np.log10(np.maximum(v, 1e-300)) if log else v, np.nan)
    lo, hi = np.nanmin(t), np.nanmax(t)
    for cols in _bins(len(v), width):
        chunk = t[list(cols)]
        if not np.isfinite(chunk).all():
            text.append("×", style="bold red")
            continue
        level = 0 if hi == lo else int((chunk.mean() - lo) / (hi - lo) * (len(BARS) - 1) + 0.5)
        text.append(BARS[level])
    return text


def verdict(data: dict[str, Any]) -> Text:
    diags = data.get("diagnoses", [])
    errors = [d for d in diags if d["severity"] == "error"]
    warnings = [d for d in diags if d["severity"] == "warning"]
    status = data.get("status", "completed")
    if not errors and not warnings and status == "completed":
        return Text("✔ healthy: no problems found in this run", style="bold green")
    parts = []
    if errors:
        parts.append(f"{len(errors)} error(s)")
    if warnings:
        parts.append(f"{len(warnings)} warning(s)")
    head = (errors or warnings or [None])[0]
    lead = f"{head['code']}: {head['message']}" if head else f"run {status}"
    style = "bold red" if errors else "bold yellow"
    return Text(f"✘ {', '.join(parts) or status} — {lead}", style=style)


def diagnoses_table(diags: list[dict[str, Any]]) -> Table:
    table = Table(show_lines=True, expand=True, title="diagnoses")
    table.add_column("severity", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("where")
    table.add_column("what, evidence, fix", ratio=3)
    for d in ranked(diags):
        where = ", ".join(d["modules"][:3]) or "-"
        if d["steps"]:
            where += (
                f"\nstep {', '.join(map(str, d['steps'][:4]))}{' …' if len(d['steps']) > 4 else ''}"
            )
        body = Text(d["message"])
        evidence = _evidence_line(d["evidence"])
        if evidence:
            body.append("\n" + evidence, style="dim")
        body.append("\nfix: ", style="bold")
        body.append(_fix_cell(d))
        table.add_row(
            Text(d["severity"], style=SEVERITY_STYLE.get(d["severity"], "")), d["code"], where, body
        )
    return table


def commands_of(diagnosis: dict[str, Any]) -> list[str]:
    """A diagnosis's command lines (``Diagnosis.commands``), printed apart from the table,
    each on one line that is never wrapped or cut, so they paste as they are.

    Args:
        diagnosis (dict[str, Any]): a ``report.json`` ``diagnoses[]`` entry.

    Returns:
        list[str]: its ``commands``, in order (empty for a prose-only fix).
    """
    if "commands" in diagnosis:
        return list(diagnosis["commands"])
    if diagnosis.get("code") == "memory":
        # A report.json written before diagnoses had a ``commands`` key (``gradoctor report``
        # re-renders old runs) kept them only inside the ``fix`` text, where the memory
        # diagnosis, then the only one with commands, began each with one of these leads.
        parts = [p.strip() for p in diagnosis["fix"].split("; ")]
        return [p for p in parts if p.startswith(("rerun with ", "measure a plan: "))]
    return []


def fix_prose(diagnosis: dict[str, Any]) -> list[str]:
    """The parts of a diagnosis's ``fix`` (joined with ``"; "``) that are not its commands.

    Args:
        diagnosis (dict[str, Any]): a ``report.json`` ``diagnoses[]`` entry.

    Returns:
        list[str]: the prose parts, stripped, in order.
    """
    text = diagnosis["fix"]
    for command in commands_of(diagnosis):
        text = text.replace(command, "")
    return [p.strip() for p in text.split("; ") if p.strip()]


def _fix_cell(diagnosis: dict[str, Any]) -> str:
    """The fix as the table shows it: its prose, and a pointer to its commands below."""
    pointer = ["the commands below the table"] if commands_of(diagnosis) else []
    return "; ".join(fix_prose(diagnosis) + pointer)


def fix_commands(diags: list[dict[str, Any]]) -> Text | None:
    """Every diagnosis's commands, most severe first, as one unwrapped ``Text`` (or None)."""
    lines = [c for d in ranked(diags) for c in commands_of(d)]
    if not lines:
        return None
    return Text("\n".join(lines), no_wrap=True, overflow="ignore")


_BYTE_KEYS = {  # evidence values that are byte counts (the memory diagnosis)
    "parameters",
    "gradients",
    "optimizer_state",
    "tried_to_allocate",
    "device_total",
    "free",
    "allocated",
    "reserved",
    "budget",
    "needed_at_least",
    "activations_estimate",
}


def _evidence_line(evidence: dict[str, Any], limit: int = 6) -> str:
    items = []
    for key, value in evidence.items():
        if key in _BYTE_KEYS and isinstance(value, int) and not isinstance(value, bool):
            items.append(f"{key}={format_bytes(value)}")
        elif isinstance(value, float):
            items.append(f"{key}={value:.3g}")
        elif isinstance(value, (int, str)) and len(str(value)) < 40:
            items.append(f"{key}={value}")
        elif isinstance(value, dict) and key in ("input_range", "output_range") and value:
            items.append(
                f"{key}=[{decode_float(value.get('min')):.3g}, {decode_float(value.get('max')):.3g}]"
            )
        if len(items) >= limit:
            break
    return " · ".join(items)


def gradient_flow(history: dict[str, Any], width: int = 48, max_rows: int = 24) -> Group | None:
    """Per-module gradient norm over the logged steps, log-scale colour blocks; × = NaN/Inf."""
    names = history.get("module_names") or []
    rows = history.get("module_grad_norms") or []
    steps = history.get("module_norm_steps") or history.get("step") or []
    if not names or not rows:
        return None
    order = [n for n in history.get("forward_order", []) if n in names]
    order += [n for n in names if n not in order]
    if len(order) > max_rows:  # keep input side, output side, and an even sample between
        keep = np.unique(np.linspace(0, len(order) - 1, max_rows).astype(int))
        order = [order[i] for i in keep]
    norms = np.asarray([[decode_float(x) for x in r] for r in rows], dtype=np.float64)
    cols = _bins(len(steps), width)
    logs = np.where(
        np.isfinite(norms) & (norms > 0), np.log10(np.where(norms > 0, norms, 1.0)), np.nan
    )
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    table = Table(
        title="gradient flow",
        title_justify="left",
        show_header=True,
        box=None,
        pad_edge=False,
    )
    table.add_column("module", no_wrap=True, style="dim")
    table.add_column(f"steps {steps[0]} → {steps[-1]}", no_wrap=True)
    for name in order:
        j = names.index(name)
        line = Text()
        for c in cols:
            raw = norms[list(c), j]
            if not np.isfinite(raw).all():
                line.append("×", style="bold red")
            elif (raw == 0).all():
                line.append("·", style="dim")
            else:
                level = float(np.nanmedian(logs[list(c), j]))
                k = 0 if hi == lo else int((level - lo) / (hi - lo) * (len(HEAT) - 1) + 0.5)
                line.append("█", style=HEAT[k])
        table.add_row(name, line)
    legend = Text(f"log10 |grad|: {lo:.1f} ", style="dim")
    for color in HEAT:
        legend.append("█", style=color)
    legend.append(f" {hi:.1f}   · zero   × NaN/Inf", style="dim")
    return Group(table, legend)


def loss_and_scale(data: dict[str, Any], width: int = 60) -> Table:
    h = data.get("history", {})
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(no_wrap=True)
    losses = h.get("loss") or []
    if losses:
        finite = [x for x in map(decode_float, losses) if math.isfinite(x)]
        span = f"  {finite[0]:.4g} → {decode_float(losses[-1]):.4g}" if finite else ""
        table.add_row("loss", sparkline(losses, width) + Text(span, style="dim"))
    if data.get("precision") == "fp16" and h.get("loss_scale"):
        scales = [max(decode_float(s), 1e-30) for s in h["loss_scale"]]
        table.add_row(
            "loss scale",
            sparkline(scales, width, log=True)
            + Text(f"  {scales[0]:.3g} → {scales[-1]:.3g}", style="dim"),
        )
        skipped = set(h.get("skipped_steps", []))
        marks = Text()
        for cols in _bins(len(h["step"]), width):
            hit = any(h["step"][i] in skipped for i in cols)
            marks.append("×" if hit else " ", style="bold red" if hit else "")
        table.add_row("skipped", marks + Text(f"  {len(skipped)} step(s)", style="dim"))
    return table


def triage_parts(data: dict[str, Any]) -> list[Any]:
    """The triage's renderables in order; a fix's commands are one ``Text`` with ``no_wrap``:
    print it with ``soft_wrap=True`` so a long command is neither cut nor broken."""
    parts: list[Any] = [verdict(data)]
    if data.get("diagnoses"):
        parts.append(diagnoses_table(data["diagnoses"]))
        commands = fix_commands(data["diagnoses"])
        if commands is not None:
            parts.append(commands)
    flow = gradient_flow(data.get("history", {}))
    if flow is not None:
        parts.append(flow)
    parts.append(loss_and_scale(data))
    return parts


def triage_view(data: dict[str, Any]) -> Group:
    return Group(*triage_parts(data))
