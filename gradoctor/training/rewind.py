"""Where the current step began, so that a step that fails before its update can be undone
and the last completed step checkpointed: a run that fails in the user's data iterator,
model, loss or backward (or runs out of memory) is resumable after the fix.

``Rewind.mark()`` runs at every step start and keeps:

- the data position (a small dict; the epoch's shuffle RNG is shared, not copied);
- the raw states of Python's, NumPy's and torch's RNGs (CPU: a 5 KB tensor copy; CUDA: each
  device's seed and offset, no sync);
- a copy of the model's persistent buffers (BatchNorm running statistics), which a forward
  changes before any update: one ``torch._foreach_copy_`` per step, nothing for models
  without buffers.

Measured cost (bench/overhead.py, 2-core CPU): see the README's "what happens on a fault".
``undo()`` puts all three back; the parameters and the optimizer state are untouched until
the optimizer step begins, which ``TrainStep`` reports (``update_began``), so after that a
step cannot be undone.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from gradoctor.training.state import TrainState

RECHECK = 50  # steps between two checks that the step still draws nothing from Python/NumPy


def _host_rngs() -> tuple[Any, Any]:
    return random.getstate(), np.random.get_state()


def _same(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    (py_a, np_a), (py_b, np_b) = a, b
    return (
        py_a == py_b
        and np.array_equal(np_a[1], np_b[1])
        and all(x == y for i, (x, y) in enumerate(zip(np_a, np_b)) if i != 1)
    )


class Rewind:
    """The start of the current step of ``state`` (one per run)."""

    def __init__(self, state: TrainState):
        self.state = state
        param_ids = {id(p) for p in state.model.parameters()}
        self._buffers = [
            t
            for t in state.model.state_dict(keep_vars=True).values()
            if isinstance(t, torch.Tensor) and id(t) not in param_ids
        ]
        self._copies = [torch.empty_like(t) for t in self._buffers]
        self._data: dict[str, Any] | None = None
        self._rng: tuple[Any, ...] | None = None
        self._host: tuple[Any, Any] | None = None  # Python's and NumPy's, when kept
        self._probe: tuple[Any, Any] | None = None  # the last step start's, to compare
        self._marks = 0
        self.host_draws = False  # a step was seen drawing from Python's or NumPy's RNG

    def mark(self) -> None:
        """Remember this moment (the start of a step)."""
        self._data = self.state.data.state()
        cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.get_rng_state_all()
        self._rng = (torch.get_rng_state(), cuda)
        checking = self._probe is not None
        self._host = None
        if self.host_draws or checking or self._marks % RECHECK == 0:
            self._host = _host_rngs()
            if checking and not self.host_draws and not _same(self._probe, self._host):
                self.host_draws = True  # from now on kept at every step start
            self._probe = None if checking or self.host_draws else self._host
        self._marks += 1
        if self._buffers:
            torch._foreach_copy_(self._copies, self._buffers)

    def undo(self) -> bool:
        """Put the data position, the RNGs and the buffers back to the last ``mark()``;
        False when there was none."""
        if self._data is None or self._rng is None:
            return False
        cpu, cuda = self._rng
        if self._host is not None:
            random.setstate(self._host[0])
            np.random.set_state(self._host[1])
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._copies)
        self.state.data.rewind(self._data)
        self.state.optimizer.zero_grad(set_to_none=True)
        return True


__all__ = ["Rewind"]
