"""The triage report in the terminal: verdict, ranked diagnoses, gradient flow, loss, loss scale.

Pure rendering of a report dict (``TrainResult.to_dict()``), so ``gradoctor report RUN_DIR``
draws exactly what ``gradoctor train`` drew.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.padding import Padding
from rich.rule import Rule
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
# The diagnoses table is drawn only when its "what, evidence, fix" column gets at least this
# many characters; on a narrower terminal each diagnosis is a block of its own instead.
MIN_FIX_WIDTH = 40


class Fit:
    """A renderable made for the width it is drawn at: ``build(width)`` runs at render time,
    so one triage draws a table on a wide terminal and a stacked layout on a narrow one."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Any]:
        yield self.build(options.max_width)


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


def _where(d: dict[str, Any]) -> tuple[str, str]:
    """The modules (or '-') and the steps (or '') a diagnosis names."""
    steps = ""
    if d["steps"]:
        steps = f"step {', '.join(map(str, d['steps'][:4]))}{' …' if len(d['steps']) > 4 else ''}"
    return ", ".join(d["modules"][:3]) or "-", steps


def _body(d: dict[str, Any]) -> Text:
    """What, evidence, fix: prose that wraps at spaces; a word longer than the line folds."""
    body = Text(d["message"], overflow="fold")
    evidence = _evidence_line(d["evidence"])
    if evidence:
        body.append("\n" + evidence, style="dim")
    body.append("\nfix: ", style="bold")
    body.append(_fix_cell(d))
    return body


def _severity(d: dict[str, Any]) -> Text:
    return Text(d["severity"], style=SEVERITY_STYLE.get(d["severity"], ""))


def _table_widths(diags: list[dict[str, Any]], width: int) -> tuple[int, int, int, int]:
    """Severity, code and where columns at their natural width (where capped at a fifth of
    the line, folding past it), and what is left, less borders and padding, for the fix."""
    severity = max([8] + [len(d["severity"]) for d in diags])
    code = max([4] + [len(d["code"]) for d in diags])
    where = max([5] + [len(part) for d in diags for part in _where(d)])
    where = min(where, max(12, width // 5))
    return severity, code, where, width - 13 - severity - code - where


def diagnoses_table(diags: list[dict[str, Any]], width: int | None = None) -> Table:
    """One row per diagnosis. With ``width`` (the line the table is drawn on) every column
    but the fix gets a fixed width and the fix gets the rest, so it is never squeezed."""
    table = Table(show_lines=True, expand=True, title="diagnoses")
    if width is None:
        table.add_column("severity", no_wrap=True)
        table.add_column("code", overflow="fold")
        table.add_column("where", overflow="fold")
    else:
        severity, code, where, _ = _table_widths(diags, width)
        table.add_column("severity", width=severity, overflow="fold")
        table.add_column("code", width=code, overflow="fold")
        table.add_column("where", width=where, overflow="fold")
    table.add_column("what, evidence, fix", ratio=3, overflow="fold")
    for d in ranked(diags):
        modules, steps = _where(d)
        where = modules + (f"\n{steps}" if steps else "")
        table.add_row(_severity(d), d["code"], where, _body(d))
    return table


def diagnoses_stacked(diags: list[dict[str, Any]]) -> Group:
    """The narrow-terminal layout: a block per diagnosis (severity and code, where, then the
    what, evidence and fix indented below), most severe first."""
    blocks: list[Any] = [Rule("diagnoses", style="dim")]
    for i, d in enumerate(ranked(diags)):
        modules, steps = _where(d)
        head = _severity(d) + Text("  ") + Text(d["code"], style="bold")
        where = Text("where: ", style="dim") + Text(modules + (f" · {steps}" if steps else ""))
        where.overflow = "fold"
        head.overflow = "fold"
        if i:
            blocks.append(Text(""))
        blocks += [head, Padding(Group(where, _body(d)), (0, 0, 0, 2), expand=False)]
    return Group(*blocks)


def diagnoses(diags: list[dict[str, Any]]) -> Fit:
    """The diagnoses table where its fix column gets ``MIN_FIX_WIDTH`` characters, else the
    stacked blocks; nothing is cut either way."""

    def build(width: int) -> RenderableType:
        if _table_widths(diags, width)[3] >= MIN_FIX_WIDTH:
            return diagnoses_table(diags, width)
        return diagnoses_stacked(diags)

    return Fit(build)


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


def gradient_flow(history: dict[str, Any], width: int = 48, max_rows: int = 24) -> Fit | None:
    """Per-module gradient norm over the logged steps, log-scale colour blocks; × = NaN/Inf.
    At most ``width`` step columns, fewer where the line is too narrow for them and the names;
    a module name longer than the line allows folds onto a second line."""
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
    logs = np.where(
        np.isfinite(norms) & (norms > 0), np.log10(np.where(norms > 0, norms, 1.0)), np.nan
    )
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    header = f"steps {steps[0]} → {steps[-1]}"

    def build(line_width: int) -> Group:
        name_width = min(max(len("module"), *map(len, order)), max(8, line_width // 2))
        cols = _bins(len(steps), max(8, min(width, line_width - name_width - 2)))
        table = Table(
            title="gradient flow",
            title_justify="left",
            show_header=True,
            box=None,
            pad_edge=False,
        )
        table.add_column("module", width=name_width, overflow="fold", style="dim")
        table.add_column(header, overflow="fold")
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

    return Fit(build)


def loss_and_scale(data: dict[str, Any], width: int = 60) -> Fit:
    """Loss (and, in fp16, loss scale and skipped steps) sparklines: at most ``width``
    columns, fewer where the line is too narrow for them with their labels and ranges."""
    h = data.get("history", {})
    losses = h.get("loss") or []
    fp16 = data.get("precision") == "fp16" and bool(h.get("loss_scale"))
    span = ""
    if losses:
        finite = [x for x in map(decode_float, losses) if math.isfinite(x)]
        span = f"  {finite[0]:.4g} → {decode_float(losses[-1]):.4g}" if finite else ""
    scales = [max(decode_float(s), 1e-30) for s in h["loss_scale"]] if fp16 else []
    skipped = set(h.get("skipped_steps", []))
    scale_span = f"  {scales[0]:.3g} → {scales[-1]:.3g}" if scales else ""
    skipped_span = f"  {len(skipped)} step(s)"

    def build(line_width: int) -> Table:
        labels = (["loss"] if losses else []) + (["loss scale", "skipped"] if fp16 else [])
        spans = [span] + ([scale_span, skipped_span] if fp16 else [])
        label_width = max(map(len, labels), default=0)
        room = line_width - label_width - 2 - max(map(len, spans))
        bars = max(8, min(width, room))
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", overflow="fold")
        table.add_column(overflow="fold")
        if losses:
            table.add_row("loss", sparkline(losses, bars) + Text(span, style="dim"))
        if fp16:
            table.add_row(
                "loss scale",
                sparkline(scales, bars, log=True) + Text(scale_span, style="dim"),
            )
            marks = Text()
            for cols in _bins(len(h["step"]), bars):
                hit = any(h["step"][i] in skipped for i in cols)
                marks.append("×" if hit else " ", style="bold red" if hit else "")
            table.add_row("skipped", marks + Text(skipped_span, style="dim"))
        return table

    return Fit(build)


def triage_parts(data: dict[str, Any]) -> list[Any]:
    """The triage's renderables in order; a fix's commands are one ``Text`` with ``no_wrap``:
    print it with ``soft_wrap=True`` so a long command is neither cut nor broken."""
    parts: list[Any] = [verdict(data)]
    if data.get("diagnoses"):
        parts.append(diagnoses(data["diagnoses"]))
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
