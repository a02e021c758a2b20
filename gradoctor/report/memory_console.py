"""Terminal rendering of a :class:`~gradoctor.memory.result.MemoryProfile` (rich)."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gradoctor.memory.result import MemoryProfile
from gradoctor.memory.units import format_bytes, format_flops

_TOP_MODULES = 15


def render_memory_profile(p: MemoryProfile, console: Console) -> None:
    """Breakdown, peak, modules, what-if table with the self-check, plan, cost and notes."""
    measured = "CUDA allocator" if p.method == "cuda_allocator" else "tracked tensor bytes"
    console.print(
        f"[bold]memory profile[/] {escape(p.recipe)} on {p.device} ({measured}): "
        f"{p.precision}, batch {p.batch_size}"
        + (f" x {p.accum_steps} micro-batches" if p.accum_steps > 1 else "")
        + f", peak [bold]{format_bytes(p.peak)}[/]"
    )
    _breakdown(p, console)
    _peak(p, console)
    _modules(p, console)
    _what_if(p, console)
    _plan(p, console)
    c = p.cost
    console.print(
        f"cost: profile {c['profile_seconds']:.1f} s = {c['profile_step_equivalents']:.1f} steps "
        f"of {c['step_seconds'] * 1e3:.0f} ms ({c['profile_steps']:.0f} measured steps + a no-grad "
        f"forward per precision); self-check {c['check_seconds']:.1f} s for "
        f"{c['check_steps']:.0f} configurations"
    )
    for note in p.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    if p.snapshot:
        console.print(f"snapshot: {escape(p.snapshot)} (open in https://pytorch.org/memory_viz)")


def _breakdown(p: MemoryProfile, console: Console) -> None:
    title = "Where the peak goes (one steady-state step)"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("category", overflow="fold")
    table.add_column("bytes", justify="right", overflow="fold")
    table.add_column("share", justify="right", overflow="fold")
    for cat in p.breakdown:
        table.add_row(cat.name.replace("_", " "), format_bytes(cat.bytes), f"{cat.share:.1%}")
    console.print(table)


def _peak(p: MemoryProfile, console: Console) -> None:
    for info in (p.first_step, p.steady):
        where = f"{info.phase}" + (f" in {info.module}" if info.module else "")
        if p.accum_steps > 1:
            where += f", micro-batch {info.micro_batch + 1}"
        console.print(f"peak of the {info.step} step: {format_bytes(info.bytes)} during {where}")
    if p.first_step.bytes < p.steady.bytes:
        console.print(
            "  the steady state is higher: the optimizer state, created at step 1, stays alive"
        )
    alive = ", ".join(
        f"{format_bytes(a['bytes'])} {a['kind']} ({a['created_in'] or 'model'})"
        for a in p.steady.alive[:3]
    )
    if alive:
        console.print(f"  largest alive at the peak: {escape(alive)}")


def _modules(p: MemoryProfile, console: Console) -> None:
    """The top modules: a table with a column per field where it fits the terminal; else the
    class name goes under the module's name (which folds rather than being cut) and the
    headers wrap; on a terminal too narrow even for that, a block per module."""
    title = f"Modules by bytes saved for backward (top {_TOP_MODULES})"
    ranked = sorted(p.modules, key=lambda m: -m.saved_total)
    rows = [
        (
            m.name,
            m.type,
            format_bytes(m.saved),
            format_bytes(m.saved_total),
            f"{m.forward_time_share:.0%}",
            format_bytes(m.checkpoint_saves),
            format_flops(m.recompute_flops),
        )
        for m in [x for x in ranked if x.name][:_TOP_MODULES]
    ]
    heads = ("module", "type", "saved own", "saved inside", "fwd time", "ckpt frees", "recompute")
    widest = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
    # numbers keep their widest value on one line; their headers may wrap at the space
    numbers = [
        max([len(w) for w in h.split()] + [len(r[i]) for r in rows])
        for i, h in enumerate(heads)
        if i >= 2
    ]
    full = sum(widest) + 3 * len(heads) + 1  # cells, padding and borders
    name_room = console.width - sum(numbers) - 3 * (len(heads) - 1) - 1
    if full <= console.width:
        table = Table(title=title, title_justify="left")
        for i, head in enumerate(heads):
            table.add_column(
                head, justify="left" if i < 2 else "right", width=widest[i], overflow="fold"
            )
        for row in rows:
            table.add_row(*map(Text, row))
    elif name_room >= 12:
        table = Table(title=title, title_justify="left")
        table.add_column("module / type", width=min(name_room, max(widest[:2])), overflow="fold")
        for head, width in zip(heads[2:], numbers):
            table.add_column(head, justify="right", width=width, overflow="fold")
        for row in rows:
            name = Text(row[0]) + Text("\n" + row[1], style="dim")
            table.add_row(name, *map(Text, row[2:]))
    else:
        blocks: list[RenderableType] = [Text(title, style="italic")]
        for row in rows:
            head = Text(row[0], style="bold") + Text("  " + row[1], style="dim")
            head.overflow = "fold"
            fields = " · ".join(f"{h} {v}" for h, v in zip(heads[2:], row[2:]))
            blocks += [head, Padding(Text(fields, overflow="fold"), (0, 0, 0, 2), expand=False)]
        console.print(Group(*blocks))
        return
    console.print(table)


def _what_if(p: MemoryProfile, console: Console) -> None:
    checks = {(c.precision, c.checkpoint, c.batch_size): c for c in p.checks}
    table = Table(title="What if (predicted steady-state peak)", title_justify="left")
    for col in ("precision", "checkpoint", "batch", "predicted", "phase"):
        justify = "right" if col in ("batch", "predicted") else "left"
        table.add_column(col, justify=justify, overflow="fold")
    if p.plan.budget is not None and p.plan.budget_source != "none":
        table.add_column("fits", justify="center", overflow="fold")
    if checks:
        table.add_column("measured", justify="right", overflow="fold")
        table.add_column("error", justify="right", overflow="fold")
    for row in p.what_if:
        cells = [
            row.precision,
            row.checkpoint,
            str(row.batch_size),
            format_bytes(row.predicted_peak),
            row.peak_phase,
        ]
        if p.plan.budget is not None and p.plan.budget_source != "none":
            cells.append("[green]yes[/]" if row.fits else "[red]no[/]")
        check = checks.get((row.precision, row.checkpoint, row.batch_size))
        if checks:
            if check is None or check.measured is None:
                cells += [check.status if check else "-", ""]
            elif check.status == "over_tolerance":
                cells += [format_bytes(check.measured), f"[red]{check.error_pct:+.1f}%[/]"]
            else:
                cells += [format_bytes(check.measured), f"{check.error_pct:+.1f}%"]
        table.add_row(*cells)
    console.print(table)
    off = [c for c in p.checks if c.status == "over_tolerance"]
    if off:
        worst = max(off, key=lambda c: abs(c.error_pct or 0.0))
        low = sum((c.error_pct or 0.0) < 0 for c in off)
        tol = f" (tolerance {worst.tolerance_pct:g}%)" if worst.tolerance_pct is not None else ""
        console.print(
            f"[bold red]warning:[/] {len(off)} self-check(s) off by more than the "
            f"tolerance{tol}, {low} of them under-predicted; worst {worst.error_pct:+.1f}% "
            f"({worst.precision}, checkpoint {worst.checkpoint}, batch {worst.batch_size}): "
            "do not rely on these predictions; the measured peaks are in the table"
        )


def _plan(p: MemoryProfile, console: Console) -> None:
    plan = p.plan
    if plan.budget_source == "none":
        head = "checkpoint plan (no --budget: for half of what checkpointing can free)"
    else:
        head = f"checkpoint plan for {format_bytes(plan.budget)} ({plan.budget_source})"
    console.print(f"[bold]{head}[/]")
    if not plan.fits:
        console.print(
            f"  [red]does not fit at batch {p.batch_size}[/]: the lowest-peak checkpoint set "
            f"({escape(', '.join(plan.recipe_names) or 'none')}) predicts "
            f"{format_bytes(plan.predicted_peak)}"
        )
        if plan.smallest:
            s = plan.smallest
            console.print(
                f"  [red]nothing fits[/]: the smallest configuration is {s['precision']}, batch "
                f"{s['batch_size']}, checkpoint {escape(', '.join(s['checkpoint']) or 'off')}: "
                f"{format_bytes(s['predicted_peak'])}"
            )
    elif not plan.modules:
        console.print(
            f"  fits without checkpointing (predicted {format_bytes(plan.predicted_peak)})"
        )
    else:
        console.print(
            f"  predicted peak {format_bytes(plan.predicted_peak)}, recompute "
            f"{format_flops(plan.recompute_flops)} (+{plan.recompute_share:.0%} of a step's "
            "FLOPs); paste into the recipe:"
        )
        console.print(escape(plan.recipe_lines), highlight=False)
    for prec, sizes in plan.max_batch_size.items():
        console.print(
            f"  largest batch that fits, {prec}: {sizes['off'] or 'none'} without checkpointing, "
            f"{sizes['plan'] or 'none'} with the plan"
        )
