"""An endless stream of batches over a re-iterable data set, with an exact resume position."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gradoctor.errors import UserCodeError
from gradoctor.training.environment import capture_rng, restore_rng


class DataStream:
    """Yields batches forever, re-iterating ``data`` at each epoch.

    The RNG state at the start of each epoch is kept so a resumed run can rebuild the epoch's
    shuffle order (a DataLoader with the default generator draws it from the global RNG),
    then skip the batches already consumed. A loader with a private generator, or random
    augmentation drawn inside the data set, is not replayed exactly.
    """

    def __init__(self, data: Iterable[Any]):
        if not hasattr(data, "__iter__"):
            raise UserCodeError(
                f"the data component returned a {type(data).__name__}, which is not iterable",
                hint="return a DataLoader or any re-iterable collection of batches",
            )
        self.data = data
        # A DistributedSampler (ours or the user's) reshuffles only when told the epoch.
        self._set_epoch = getattr(getattr(data, "sampler", None), "set_epoch", None)
        self.epoch = 0
        self.index = 0  # batches consumed in the current epoch
        self._epoch_rng: dict[str, Any] | None = None
        self._it: Iterator[Any] | None = None
        self._rewound: dict[str, Any] | None = None

    def next(self) -> Any:
        if self._rewound is not None:  # re-read from the position a failed step began at
            position, self._rewound = self._rewound, None
            self.restore(position)
        if self._it is None:
            self._epoch_rng = capture_rng()
            if self._set_epoch is not None:
                self._set_epoch(self.epoch)
            self._it = iter(self.data)
            self.index = 0
        try:
            batch = next(self._it)
        except StopIteration:
            if self.index == 0:
                raise UserCodeError(
                    "the data component yielded no batches", hint="check your data set is not empty"
                ) from None
            self.epoch += 1
            self._it = None
            return self.next()
        self.index += 1
        return batch

    def state(self) -> dict[str, Any]:
        if self._rewound is not None:
            return self._rewound
        return {"epoch": self.epoch, "index": self.index, "epoch_rng": self._epoch_rng}

    def rewind(self, position: dict[str, Any]) -> None:
        """Go back to ``position`` (a ``state()`` of this stream): ``state()`` returns it at
        once; the iterator is rebuilt there only if another batch is asked for."""
        self._rewound = position

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the iterator at ``state``'s position; the global RNG is left as it was."""
        self.epoch = state["epoch"]
        if state["epoch_rng"] is None:  # taken before the first batch: start the epoch afresh
            self._it, self.index, self._epoch_rng = None, 0, None
            return
        current = capture_rng()
        restore_rng(state["epoch_rng"])
        self._epoch_rng = state["epoch_rng"]
        if self._set_epoch is not None:
            self._set_epoch(self.epoch)
        self._it = iter(self.data)
        for _ in range(state["index"]):
            next(self._it)
        self.index = state["index"]
        restore_rng(current)
