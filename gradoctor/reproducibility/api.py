"""``gradoctor repro``: is a recipe's run reproducible, and if not, which op first made it differ.

``repro(recipe)`` runs the recipe's first N optimizer steps twice, in two fresh processes
started side by side (``worker.py``), each recording a digest of every op's outputs in
forward, backward and the optimizer step (``recorder.py``; one host sync per step), and
compares the two streams (``compare.py``). When they differ:

1. a second pair of processes re-runs up to the divergent step and keeps the root op's
   outputs, to measure the size of the difference (``max_abs_diff``; None when the
   difference did not recur, or the root is a structural one);
2. a third pair runs under ``torch.use_deterministic_algorithms(True)`` (with
   ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and cuDNN's deterministic flags) and says whether
   that makes the run reproducible; then one more process measures what it costs: plain
   steps (no recorder) in ordinary and deterministic mode, alternating blocks in one process
   (``worker.deterministic_cost``), the ratio of their median step times.

Cost: two processes side by side, each a start-up (importing torch, building the recipe)
and N recorded steps; when the runs differ, the capture pair (up to the divergent step), the
deterministic pair and the timing process (4N plain steps) follow. One process at a time: under
torchrun, run it without torchrun.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradoctor.errors import GradoctorError, UsageError
from gradoctor.recipe import Recipe, load_command_recipe
from gradoctor.reproducibility.compare import Divergence, first_divergence
from gradoctor.reproducibility.result import DeterministicCheck, ReproResult
from gradoctor.reproducibility.stream import OpStream
from gradoctor.reproducibility.worker import WorkerSpec, error_from_dict
from gradoctor.sinks.report_json import check_json_target, write_json_output

_NO_DETERMINISTIC_IMPL = "does not have a deterministic implementation"


@dataclass
class _Run:
    stream: OpStream | None
    captured: list[torch.Tensor] | None
    time_ratio: float | None = None


def _start(spec: WorkerSpec, folder: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    spec_path, out_path = folder / f"{tag}.json", folder / f"{tag}.out.pt"
    spec.write(spec_path)
    env = dict(os.environ)
    if spec.deterministic or spec.timing:  # before CUDA starts (the timing's deterministic half)
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradoctor", "repro-worker", str(spec_path), str(out_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    return proc, out_path


def _finish(proc: subprocess.Popen, out_path: Path) -> _Run | GradoctorError:
    _, stderr = proc.communicate()
    if not out_path.is_file():
        tail = "\n".join((stderr or "").strip().splitlines()[-15:])
        return GradoctorError(
            f"a repro worker process died (exit {proc.returncode}) before writing its result:"
            f"\n{tail}",
            hint="run `gradoctor train` on the recipe to see the failure in one process",
        )
    out: dict[str, Any] = torch.load(out_path, weights_only=True)
    if "error" in out:
        err = error_from_dict(out["error"])
        err.worker_cause = out["error"].get("cause")  # type: ignore[attr-defined]
        return err
    if "time_ratio" in out:
        return _Run(None, None, float(out["time_ratio"]))
    if "stream" not in out:
        tail = "\n".join((stderr or "").strip().splitlines()[-15:])
        return GradoctorError(f"a repro worker process ended without a result:\n{tail}")
    return _Run(OpStream.load(Path(out["stream"])), out["captured"])


def _pair(specs: tuple[WorkerSpec, WorkerSpec], folder: Path, tag: str) -> tuple[_Run, _Run]:
    """Two worker processes side by side; raises the first one's error, if any."""
    started = [_start(spec, folder, f"{tag}{i}") for i, spec in enumerate(specs)]
    runs = [_finish(proc, out) for proc, out in started]
    for run in runs:
        if isinstance(run, GradoctorError):
            raise run
    return runs[0], runs[1]  # type: ignore[return-value]


def _median_step(stream: OpStream) -> float:
    times = stream.step_seconds[1:] or stream.step_seconds
    return statistics.median(times) if times else float("nan")


def _max_abs_diff(a: list[torch.Tensor] | None, b: list[torch.Tensor] | None) -> float | None:
    """Largest |a - b| over the root op's written tensors (inf where exactly one side is
    non-finite); None when either run did not capture them or their shapes differ."""
    if not a or not b or len(a) != len(b):
        return None
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return None
        if x.numel() == 0:
            continue
        diff = (x - y).abs()
        one_side = torch.isfinite(x) ^ torch.isfinite(y)
        diff = torch.where(one_side, torch.full_like(diff, float("inf")), diff)
        diff = torch.where(torch.isnan(diff) & ~one_side, torch.zeros_like(diff), diff)
        worst = max(worst, float(diff.max()))
    return worst


def _measure(div: Divergence, base: WorkerSpec, folder: Path) -> None:
    """The capture re-run: both sides re-run to the divergent step, keeping the root's outputs."""
    specs = (
        WorkerSpec(**{**base.__dict__, "steps": div.step, "capture": (div.step, div.index[0])}),
        WorkerSpec(**{**base.__dict__, "steps": div.step, "capture": (div.step, div.index[1])}),
    )
    a, b = _pair(specs, folder, "capture")
    size = _max_abs_diff(a.captured, b.captured)
    if size == 0.0:
        div.evidence["recurred"] = False  # the re-run pair happened to agree at this op
        size = None
    div.max_abs_diff = size


def _deterministic(base: WorkerSpec, folder: Path) -> DeterministicCheck:
    spec = WorkerSpec(**{**base.__dict__, "deterministic": True})
    try:
        a, b = _pair((spec, spec), folder, "deterministic")
    except GradoctorError as exc:
        cause = getattr(exc, "worker_cause", None) or str(exc)
        if _NO_DETERMINISTIC_IMPL in cause:
            return DeterministicCheck(False, None, error=cause.splitlines()[0])
        raise
    assert a.stream is not None and b.stream is not None
    div = first_divergence(a.stream, b.stream)
    proc, out = _start(WorkerSpec(**{**base.__dict__, "timing": True}), folder, "timing")
    timing = _finish(proc, out)
    if isinstance(timing, GradoctorError):
        raise timing
    return DeterministicCheck(div is None, round(timing.time_ratio or 0.0, 3), first_divergence=div)


def repro(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    steps: int = 3,
    deterministic_check: bool = True,
    measure_difference: bool = True,
    json_path: str | Path | None = None,
) -> ReproResult:
    """``gradoctor repro``'s API (module docstring): ``recipe`` (default ``./recipe.yaml``)
    with ``overrides``, its first ``steps`` optimizer steps. ``deterministic_check``: re-run
    in deterministic mode when the runs differ; ``measure_difference``: the capture re-run
    for ``max_abs_diff``. ``json_path`` also writes ``to_dict()`` there (checked first).
    Silent. Raises UsageError, RecipeError, UserCodeError (the user's code raised, in the
    worker: its frames are kept)."""
    t0 = time.perf_counter()
    if json_path is not None:
        check_json_target(Path(json_path))
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps must be a whole number >= 1, got {steps!r}")
    loaded = load_command_recipe(recipe, overrides, "repro")
    base = WorkerSpec(loaded.to_dict(), str(loaded.base_dir), loaded.name, steps)
    with tempfile.TemporaryDirectory(prefix="gradoctor-repro-") as tmp:
        folder = Path(tmp)
        a, b = _pair((base, base), folder, "run")
        assert a.stream is not None and b.stream is not None
        div = first_divergence(a.stream, b.stream)
        det = None
        if div is not None:
            if measure_difference and div.kind == "value":
                _measure(div, base, folder)
            if deterministic_check:
                det = _deterministic(base, folder)
    result = ReproResult(
        reproducible=div is None,
        steps=steps,
        first_divergence=div,
        deterministic_mode=det,
        recipe=loaded.source or loaded.name,
        device=a.stream.device,
        ops=[len(a.stream.records), len(b.stream.records)],
        step_seconds=[round(_median_step(a.stream), 6), round(_median_step(b.stream), 6)],
        seconds=round(time.perf_counter() - t0, 3),
    )
    if json_path is not None:
        write_json_output(Path(json_path), result.to_dict())
    return result


__all__ = ["repro"]
