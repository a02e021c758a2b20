"""How many rows (examples × interpolation steps or noisy copies) one forward+backward may
take, and running work in chunks of that size, halving and retrying on out-of-memory.

``RowBudget.estimate(f, one_example)`` sizes it to the device's free memory: the bytes one
row keeps for its backward (the saved tensors of one forward, counted by a
``saved_tensors_hooks``) against a quarter of the free memory (``torch.cuda.mem_get_info``
on CUDA, the available physical pages on a CPU), between 1 and 4096 rows. Cost: one forward
of the batch. An out-of-memory error in a chunk halves the budget and re-runs that chunk;
one row that does not fit is raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

MAX_ROWS = 4096


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 4 << 30


class RowBudget:
    """``rows``: rows per forward+backward; ``halvings``: out-of-memory retries so far."""

    def __init__(self, rows: int):
        self.rows = max(1, int(rows))
        self.halvings = 0

    @classmethod
    def estimate(cls, f: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> RowBudget:
        """Sized from one forward of ``batch`` (its saved bytes per row)."""
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        x = batch.detach().clone()
        if x.is_floating_point():
            x.requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f(x)
        per_row = max(saved[0], x.numel() * x.element_size(), 1) * 2 // x.shape[0] + 1
        return cls(min(MAX_ROWS, max(1, _free_bytes(batch.device) // 4 // per_row)))

    def _halve(self, exc: BaseException) -> None:
        if self.rows == 1:
            raise exc
        self.rows = max(1, self.rows // 2)
        self.halvings += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over chunks of ``x``'s rows, concatenated."""
        out, start = [], 0
        while start < x.shape[0]:
            end = min(x.shape[0], start + self.rows)
            try:
                out.append(fn(x[start:end]))
            except torch.OutOfMemoryError as exc:
                self._halve(exc)
                continue
            start = end
        return torch.cat(out)

    def map_examples(
        self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], count: int, per_example: int
    ) -> tuple[Any, ...]:
        """``fn(indices)`` over groups of examples that each take ``per_example`` rows; the
        results (tuples of tensors) concatenated along dim 0."""
        parts: list[tuple[torch.Tensor, ...]] = []
        start = 0
        while start < count:
            group = max(1, self.rows // max(1, per_example))
            idx = torch.arange(start, min(count, start + group))
            try:
                parts.append(fn(idx))
            except torch.OutOfMemoryError as exc:
                self._halve(exc)
                continue
            start += len(idx)
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


__all__ = ["MAX_ROWS", "RowBudget"]
