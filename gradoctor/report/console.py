"""Terminal output (rich): the progress bar during training and the summary after it.

This is the reporting layer: the only code in gradoctor that prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from gradoctor.memory.units import format_bytes
from gradoctor.report.triage import triage_parts
from gradoctor.training.progress import Reporter
from gradoctor.training.result import TrainResult


def _num(value: Any, fmt: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, fmt)


class ConsoleReporter(Reporter):
    """Progress bar (step, loss, scale, it/s, ETA) on stderr; the summary table on stdout."""

    def __init__(self, console: Console | None = None, progress_console: Console | None = None):
        self.console = console or Console()
        self.progress_console = progress_console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self._fields = {"loss": "-", "scale": "", "rate": "-"}

    def on_start(self, info: dict[str, Any]) -> None:
        self.console.print(
            f"[bold]gradoctor train[/] {info['recipe']} · {info['device']} · {info['precision']}"
            + (f" · resumed at step {info['start_step']}" if info["start_step"] else "")
        )
        self.progress = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}{task.fields[scale]} · {task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.progress_console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=info["steps"], completed=info["start_step"], **self._fields
        )

    def on_step(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        self._fields["loss"] = _num(metrics["loss"])
        self._fields["scale"] = (
            f" · scale {_num(metrics['loss_scale'], '.3g')}"
            if metrics.get("loss_scale") is not None
            else ""
        )
        self._fields["rate"] = (
            _num(1.0 / metrics["step_s"], ".1f") if metrics["step_s"] > 0 else "-"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=step, **self._fields)

    def on_end(self, result: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        render_summary(result, self.console)


def render_summary(
    result: TrainResult, console: Console, run_dir: str | Path | None = None
) -> None:
    """The short end-of-run table: outcome, loss, scale ledger, gradient norms, memory, speed.
    ``run_dir``: where the run's files are now (default: its output folder)."""
    data = result.to_dict()
    table = Table(
        title=f"run {data['status']} · {data['steps_completed']} steps · {data['duration_s']:.1f} s",
        show_header=False,
    )
    # Both columns wrap; a word longer than its column (a path, a module name) folds.
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    table.add_row("final loss", _num(data["final_loss"]))
    table.add_row("device / precision", f"{data['device']} / {data['precision']}")
    if data["precision"] == "fp16":
        skipped = data["skipped_steps"]
        shown = ", ".join(map(str, skipped[:10])) + (" …" if len(skipped) > 10 else "")
        table.add_row(
            "loss scale",
            f"{_num(data['loss_scale'], '.6g')} · {len(skipped)} skipped step(s)"
            + (f": {shown}" if skipped else ""),
        )
    total = data["grad_norm_total"]
    table.add_row(
        "grad norm (total)",
        f"last {_num(total.get('last'))} · median {_num(total.get('median'))} · max {_num(total.get('max'))}",
    )
    norms = data["grad_norms"]
    if norms:
        ranked = sorted(
            norms.items(),
            key=lambda kv: kv[1]["median"] if isinstance(kv[1]["median"], float) else float("inf"),
        )
        low, high = ranked[0], ranked[-1]
        table.add_row(
            "smallest / largest module norm",
            f"{low[0]} {_num(low[1]['median'])} · {high[0]} {_num(high[1]['median'])} (median)",
        )
    mem = data["memory"]
    if mem.get("method") == "cuda_allocator":
        table.add_row(
            "memory peaks",
            f"fwd {format_bytes(mem['forward_peak'])} · bwd {format_bytes(mem['backward_peak'])} · opt {format_bytes(mem['optimizer_peak'])} of {format_bytes(mem['device_total'])}",
        )
    else:
        table.add_row(
            "memory (tracked)",
            f"params {format_bytes(mem['params'])} · grads {format_bytes(mem['grads'])} · optimizer {format_bytes(mem['optimizer_state'])} · saved for backward {format_bytes(mem['saved_for_backward'])} · RSS peak {format_bytes(mem['rss_peak'])}",
        )
    dist = data.get("distributed")
    if dist:  # per-rank memory and the rank that first saw a non-finite value
        peaks = " · ".join(
            f"r{m['rank']} {format_bytes(m['device_peak'] if m['device_peak'] is not None else m['rss_peak'])}"
            for m in dist["memory_per_rank"]
        )
        table.add_row(
            f"{dist['strategy']} × {dist['world_size']} ({dist['backend']})",
            f"memory per rank ({'device peak' if dist['memory_per_rank'][0]['device_peak'] is not None else 'RSS peak'}): {peaks}",
        )
        first = dist.get("first_nonfinite")
        if first:
            table.add_row(
                "first non-finite",
                f"step {first['step']} ({first['reason']}) on rank(s) {', '.join(map(str, first['ranks'])) or 'all'}",
            )
        for warning in dist.get("warnings", []):
            table.add_row("distributed warning", warning)
    speed = data["throughput"]
    if speed.get("step_s"):
        table.add_row(
            "speed",
            f"{speed['step_s'] * 1000:.1f} ms/step · {_num(speed['samples_per_s'], '.1f')} samples/s",
        )
    written = ["report.json", "TensorBoard events"]
    where = Path(run_dir) if run_dir is not None else Path(data["output_dir"] or ".")
    if where.is_file():  # report.json given
        where = where.parent
    if (where / "checkpoint.pt").is_file():  # none after, e.g., an OOM
        written.append("checkpoint.pt")
    table.add_row("output", f"{data['output_dir']} ({', '.join(written)})")
    if data.get("error"):
        table.add_row("error", data["error"].splitlines()[0])
    console.print(table)
    for part in triage_parts(data):
        unwrapped = isinstance(part, Text) and part.no_wrap
        console.print(part, soft_wrap=unwrapped, crop=not unwrapped)


def print_error(error: Exception, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    console.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
