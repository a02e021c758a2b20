"""Cross-rank statistics: one ``all_reduce`` per log interval, inside the interval's flush.

What travels (float64, one vector, SUM-reduced), for an interval of ``n`` steps over ``p``
parameters and ``w`` ranks:

* the loss ``[n]`` -> mean over ranks (the global batch's loss when ranks' batches are
  equally sized; NaN on any rank makes it NaN);
* squared per-parameter gradient norms ``[n, p]`` and, on log steps, squared update /
  parameter norms ``[2, p]`` -> root of the sum: under FSDP each rank holds a shard, so the
  sum of the shards' squares is the full squared norm; under DDP every rank holds the same
  averaged gradient, so the sum is divided by ``w`` first;
* the loss scale ``[n]`` -> mean (the ranks' scales agree: see ``IntervalReducer``);
* per-rank slots ``[w, 2n + 4]``: each rank writes only its own row, so the sum is a
  gather: which steps had a non-finite local loss / local gradient norm, the rank's memory
  peak (device allocator on CUDA, else 0) and peak RSS (bytes), its stop request (Ctrl-C)
  and its count of skipped steps.

Cost: one small collective per interval, on the stream the flush already syncs; no host
sync of its own. Nothing here runs on the per-step path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gradoctor.distributed.context import DistContext

_EXTRA = 4  # per-rank scalars after the 2n flags: device peak, rss peak, stop, skips


class IntervalReducer:
    """Called by ``IntervalCollector.flush`` with the interval's device statistics.

    ``host_stats()`` gives this rank's ``(device_peak_bytes, rss_peak_bytes, stop_requested,
    skipped_steps_in_interval)`` at flush time (host values, no sync).

    Loss-scaler agreement under DDP: each rank's ``unscale_`` checks its own copy of the
    *all-reduced* gradients, so ``found_inf``, the skip decision and the scale are the same on
    every rank; the gathered skip counts check it (a mismatch is reported as a warning).
    """

    def __init__(self, ctx: DistContext, host_stats: Callable[[], tuple[int, int, bool, int]]):
        self.ctx = ctx
        self.host_stats = host_stats
        self.norm_divisor = float(ctx.world_size) if ctx.strategy == "ddp" else 1.0

    def __call__(
        self,
        loss: torch.Tensor,
        norms: torch.Tensor,
        scale: torch.Tensor | None,
        update: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """``loss`` ``[n]``, ``norms`` ``[n, p]``, ``scale`` ``[n]``, ``update`` ``[2, p]`` (device)
        -> the same, reduced over ranks, plus the gathered slots ``[w * (2n + 4)]``."""
        w, rank, n = self.ctx.world_size, self.ctx.rank, loss.numel()
        f64 = torch.float64
        body = [loss.to(f64), norms.to(f64).square().reshape(-1)]
        if scale is not None:
            body.append(scale.to(f64))
        if update is not None:
            body.append(update.to(f64).square().reshape(-1))
        slots = torch.zeros((w, 2 * n + _EXTRA), dtype=f64, device=loss.device)
        slots[rank, :n] = (~torch.isfinite(loss)).to(f64)
        slots[rank, n : 2 * n] = (~torch.isfinite(norms).all(dim=1)).to(f64)
        slots[rank, 2 * n :] = torch.tensor(self.host_stats(), dtype=f64)
        packed = torch.cat([*body, slots.reshape(-1)])
        dist.all_reduce(packed)  # the one collective per interval
        parts = list(torch.split(packed, [b.numel() for b in body] + [slots.numel()]))
        out_loss = parts.pop(0) / w
        out_norms = (parts.pop(0) / self.norm_divisor).sqrt().reshape(norms.shape).float()
        out_scale = parts.pop(0) / w if scale is not None else None
        out_update = None
        if update is not None:
            out_update = (parts.pop(0) / self.norm_divisor).sqrt().reshape(update.shape).float()
        return out_loss.float(), out_norms, out_scale, out_update, parts.pop(0)


class RankLedger:
    """Host-side record of the gathered per-rank slots, for the report's ``distributed``."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        w = ctx.world_size
        self.device_peak = [0] * w
        self.rss_peak = [0] * w
        self.skipped = [0] * w
        self.stop_requested = False  # any rank asked to stop (agreed at a flush boundary)
        self.first_nonfinite: dict[str, Any] | None = None
        self._flags: dict[int, tuple[list[int], list[int]]] = {}  # step -> (loss, grad) ranks

    def absorb(self, extra: np.ndarray, steps: list[int]) -> None:
        """Decode one interval's gathered slots ``[w * (2n + 4)]`` (host copy)."""
        n = len(steps)
        rows = extra.reshape(self.ctx.world_size, 2 * n + _EXTRA)
        self._flags = {}
        for i, step in enumerate(steps):
            bad_loss = np.flatnonzero(rows[:, i] > 0).tolist()
            bad_grad = np.flatnonzero(rows[:, n + i] > 0).tolist()
            if bad_loss or bad_grad:
                self._flags[step] = (bad_loss, bad_grad)
        tail = rows[:, 2 * n :]
        self.device_peak = np.maximum(self.device_peak, tail[:, 0]).astype(int).tolist()
        self.rss_peak = np.maximum(self.rss_peak, tail[:, 1]).astype(int).tolist()
        self.stop_requested = bool(tail[:, 2].any())
        self.skipped = (np.asarray(self.skipped) + tail[:, 3].astype(int)).tolist()
        if len(set(self.skipped)) > 1:
            message = f"ranks skipped different numbers of fp16 steps: {self.skipped}"
            if message not in self.ctx.warnings:
                self.ctx.warnings.append(message)

    def ranks_at(self, step: int, reason: str) -> list[int]:
        """Ranks whose own loss (reason ``loss``) or own gradients were non-finite at ``step``."""
        bad_loss, bad_grad = self._flags.get(step, ([], []))
        return bad_loss if reason == "loss" and bad_loss else (bad_grad or bad_loss)

    def note_nonfinite(self, step: int, reason: str) -> list[int]:
        """Remember the run's first non-finite step and the ranks that saw it first."""
        ranks = self.ranks_at(step, reason)
        if self.first_nonfinite is None:
            self.first_nonfinite = {"step": step, "reason": reason, "ranks": ranks}
        return ranks

    def summary(self) -> dict[str, Any]:
        """The report's ``distributed`` block (bytes; ranks are global ranks)."""
        cuda = self.ctx.device.type == "cuda"
        return {
            "world_size": self.ctx.world_size,
            "strategy": self.ctx.strategy,
            "backend": self.ctx.backend,
            "memory_per_rank": [
                {
                    "rank": r,
                    "device_peak": self.device_peak[r] if cuda else None,
                    "rss_peak": self.rss_peak[r],
                }
                for r in range(self.ctx.world_size)
            ],
            "skipped_per_rank": list(self.skipped),
            "first_nonfinite": self.first_nonfinite,
            "warnings": list(self.ctx.warnings),
        }


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (0-d bool, device) OR-ed over ranks: one small all_reduce, no host sync."""
    value = flag.to(torch.float32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value[0] > 0


def global_norms(norms: torch.Tensor) -> torch.Tensor:
    """FSDP: per-parameter norms of the full gradients from the local shards' norms
    (``[p]`` float32; one all_reduce of ``p`` floats; used only when clipping)."""
    squares = norms.to(torch.float64).square()
    dist.all_reduce(squares)
    return squares.sqrt().float()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (pickled; for rare events only, e.g. a non-finite replay)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def pick_finding(local: dict[str, Any], ranks: list[int]) -> tuple[dict[str, Any], int]:
    """Each rank replayed the bad step on its own batch; return the finding of the first rank
    that saw the non-finite value itself (else the first that located one, else rank 0's),
    and that rank. One ``all_gather_object`` (replays happen at most once per run)."""
    findings = gather_objects(local)
    located = [r for r, f in enumerate(findings) if f.get("phase") not in (None, "none")]
    for r in [*ranks, *located]:
        if r in located:
            return findings[r], r
    return findings[0], 0
