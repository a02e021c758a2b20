"""One run per output folder at a time: a lock file, ``OUTPUT_DIR/.gradoctor.lock``.

Created atomically (``O_CREAT | O_EXCL``) with the owner's host and PID before the run
touches anything in the folder, removed when the run ends. A lock left by a process that
no longer exists (``kill -9``, a crash) on this host is stale and taken over; a live one
refuses the second run (exit 2) with the owner's PID, instead of two runs mixing their
reports, checkpoints and events.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from gradoctor.errors import UsageError

LOCK_NAME = ".gradoctor.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``acquire()`` raises UsageError while another live process holds the folder."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and (owner.get("host") != me["host"] or _alive(owner["pid"])):
                    raise UsageError(
                        f"another gradoctor run (pid {owner['pid']} on {owner.get('host')}) is "
                        f"writing to '{self.path.parent}'",
                        hint="wait for it to finish, or give this run another output.dir",
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UsageError(
            f"cannot take the lock '{self.path}'", hint="remove it if no run is active"
        )

    def _owner(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # unreadable or half-written: treated as stale

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


__all__ = ["LOCK_NAME", "RunLock"]
