"""How a run stops: Ctrl-C / SIGTERM / SIGHUP as stop requests, and, distributed, the ranks'
agreement.

Alone, the first of these signals stops the run at the next step boundary (a consistent
checkpoint), a second one stops it now; the exit status is 128 + the first signal's number
(130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP). Distributed, every rank stops at the first step boundary after a
flush where any rank had asked (the request rides on the interval's collective), and a
SIGTERM from torchrun becomes an interrupt that waits for the report once finishing began.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from gradoctor.distributed.aggregate import RankLedger
from gradoctor.distributed.context import DistContext
from gradoctor.distributed.failure import post_failure, read_failure, sigterm_as_interrupt
from gradoctor.errors import UserCodeError

_NULL = contextlib.nullcontext()
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunControl:
    """Stop requests and the end-of-run agreement; ``dist``/``ledger`` are None alone."""

    def __init__(self, dist: DistContext | None, ledger: RankLedger | None):
        self.dist, self.ledger = dist, ledger
        self.stop_requested = False  # this process got a first Ctrl-C
        self.agreed_stop = False  # distributed: every rank stops at this boundary
        self.finishing = False  # the report is being written: a SIGTERM waits for it
        self.dist_broken = False  # a rank failed: no more collectives
        self.stop_signal = int(signal.SIGINT)  # the signal that asked to stop (exit 128 + it)

    def should_stop(self) -> bool:
        """At a step boundary: stop now? Distributed, only when every rank agrees."""
        if self.ledger is None:
            return self.stop_requested
        self.agreed_stop = self.ledger.stop_requested
        return self.agreed_stop

    def sigterm_as_interrupt(self) -> contextlib.AbstractContextManager[None]:
        if self.dist is None:
            return _NULL
        return sigterm_as_interrupt(lambda: self.finishing)

    @contextlib.contextmanager
    def stop_signals_as_requests(self) -> Iterator[None]:
        """The first SIGINT (Ctrl-C), SIGTERM (a scheduler, ``timeout``, ``kill``, a container
        stop) or SIGHUP (the terminal closed) asks the run to stop at the next step boundary,
        with a consistent checkpoint; a second one stops it at once. Distributed runs take
        SIGINT only here (torchrun's SIGTERM goes through ``sigterm_as_interrupt``)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        names = ("SIGINT",) if self.dist is not None else STOP_SIGNALS
        signums = [getattr(signal, n) for n in names if hasattr(signal, n)]

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.stop_signal = signum

        previous = {signum: signal.signal(signum, handler) for signum in signums}
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def rank_outcome(self, status: str, raised: BaseException | None) -> Any:
        """A run that did not complete, distributed: unless every rank stopped at the same
        step (non-finite stop, agreed Ctrl-C), the ranks are out of step, so no more
        collectives. A failure is posted for the other ranks; a rank whose failure was
        caused by another's (its collective lost the peer) reports that rank's message."""
        assert self.dist is not None
        if status == "stopped" or (status == "interrupted" and self.agreed_stop):
            return raised
        self.dist_broken = True
        if status != "failed":
            return raised
        posted = read_failure()
        if posted is None or posted["rank"] == self.dist.rank:
            post_failure(self.dist.rank, str(raised))
            return raised
        return UserCodeError(
            f"rank {posted['rank']} failed: {posted['message']}",
            hint=f"rank {self.dist.rank} stopped because rank {posted['rank']} raised",
        )


__all__ = ["RunControl"]
