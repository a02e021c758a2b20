"""When one rank raises, every rank stops, and the failing rank's message reaches the report.

A rank that raises mid-step cannot meet the others' next collective, so no flag can be
exchanged in-band. Instead:

1. the failing rank posts ``{"rank", "message"}`` to the process group's key-value store
   (the first post wins), stops using collectives, writes what it must (its report, if it
   is rank 0) and exits non-zero, which closes its connections;
2. the other ranks' pending collective then fails (gloo: "Connection closed by peer",
   within a second); they read the posted message, write their report (rank 0) with
   ``status: failed`` and that message, and exit non-zero;
3. torchrun sees a failed worker and sends SIGTERM to the rest: while a rank is writing its
   report the signal is held back (torchrun waits 30 s before SIGKILL); otherwise it stops
   the run like Ctrl-C.

With NCCL a dead peer does not fail the collective at once (NCCL's watchdog times out
after ``timeout``), so the surviving ranks are usually ended by torchrun's SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch.distributed as dist

KEY = "gradoctor/failure"


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()  # private, but the group's own store
    except Exception:
        return None


def post_failure(rank: int, message: str) -> None:
    """Record this rank's failure unless another rank's is already recorded."""
    store = _store()
    if store is None:
        return
    with contextlib.suppress(Exception):
        store.compare_set(KEY, "", json.dumps({"rank": rank, "message": message}))


def read_failure(wait_s: float = 0.0) -> dict[str, Any] | None:
    """The first posted failure (waiting up to ``wait_s`` seconds for one), or None."""
    store = _store()
    if store is None:
        return None
    try:
        if wait_s > 0:
            store.wait([KEY], timedelta(seconds=wait_s))
        elif not store.check([KEY]):
            return None
        return json.loads(store.get(KEY))
    except Exception:
        return None


@contextlib.contextmanager
def sigterm_as_interrupt(finishing: Callable[[], bool]) -> Iterator[None]:
    """SIGTERM (torchrun stopping the workers) raises KeyboardInterrupt, except while
    ``finishing()`` (the report and checkpoint are being written): then it is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if not finishing():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
