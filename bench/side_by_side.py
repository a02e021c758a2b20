"""Timing runs side by side in one process: the benchmarks' shared loop.

``interleaved(runs, rounds, block, device)`` times each named callable in turn, ``block``
calls at a time, for ``rounds`` rounds (so that drift in the machine's speed hits every run
alike), with a device sync around each call; returns the seconds per call by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synced before and after."""
    sync(device)
    t0 = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    runs: dict[str, Callable[[], object]], rounds: int, block: int, device: torch.device
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, call in runs.items():
            for _ in range(block):
                times[name].append(timed(call, device))
    return times
