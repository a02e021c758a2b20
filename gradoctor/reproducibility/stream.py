"""The op stream one run records: what ran, where, and the digests of what it read and wrote.

An ``OpRecord`` is one op (or one recorded tensor of the batch or the initial model):
``step`` (1-based optimizer step), ``phase`` (``init`` | ``data`` | ``forward`` |
``backward`` | ``optimizer``), ``module`` (qualified name of the innermost module running it;
``(root)`` for the model itself, ``(outside)`` for ops outside the model's forward, ``(loss)``
after it), ``op`` (``aten.add.Tensor``; ``batch``/``parameter``/``buffer`` for the recorded
tensors), ``inputs``/``outputs`` (slot numbers: indices into ``OpStream.digests``), ``shapes``
(of the outputs), ``args`` (a CRC32 of the op's non-tensor arguments: Python numbers, dtypes,
shapes) and ``rng`` (the slot of the random generator's state for random ops, else -1).

``OpStream.kinds[slot]`` says where a slot's tensor came from: ``produced`` (an op's output),
``external`` (a tensor no recorded op produced: created outside the step, from NumPy, or
changed by an unrecorded write), ``uninitialised`` (memory an ``empty``-family op returned
without writing it). Saved with ``torch.save`` as plain lists and one int64 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PRODUCED, EXTERNAL, UNINITIALISED = 0, 1, 2
KIND_NAMES = {PRODUCED: "produced", EXTERNAL: "external", UNINITIALISED: "uninitialised"}


@dataclass(frozen=True)
class OpRecord:
    step: int
    phase: str
    module: str
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    args: int
    rng: int = -1

    @property
    def key(self) -> tuple[str, str, str]:
        """What must match for two records to be the same op of the two runs."""
        return (self.phase, self.module, self.op)

    @property
    def short_op(self) -> str:
        """``aten.add`` for ``aten.add.Tensor`` (the overload dropped; recorded tensors as is)."""
        parts = self.op.split(".")
        return ".".join(parts[:2]) if len(parts) == 3 and " " not in self.op else self.op


@dataclass
class OpStream:
    """One run's records, in execution order, and the host copies of its digests."""

    records: list[OpRecord] = field(default_factory=list)
    digests: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # per step, digests included
    device: str = "cpu"

    def steps(self) -> dict[int, list[int]]:
        """Record indices by step."""
        out: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            out.setdefault(r.step, []).append(i)
        return out

    def save(self, path: Path) -> None:
        torch.save(
            {
                "records": [
                    [
                        r.step,
                        r.phase,
                        r.module,
                        r.op,
                        list(r.inputs),
                        list(r.outputs),
                        [list(s) for s in r.shapes],
                        r.args,
                        r.rng,
                    ]
                    for r in self.records
                ],
                "digests": torch.tensor(self.digests, dtype=torch.int64),
                "kinds": self.kinds,
                "step_seconds": self.step_seconds,
                "device": self.device,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> OpStream:
        raw: dict[str, Any] = torch.load(path, weights_only=True)
        records = [
            OpRecord(s, ph, m, op, tuple(i), tuple(o), tuple(tuple(x) for x in sh), a, rng)
            for s, ph, m, op, i, o, sh, a, rng in raw["records"]
        ]
        return cls(
            records,
            raw["digests"].tolist(),
            list(raw["kinds"]),
            list(raw["step_seconds"]),
            raw["device"],
        )


__all__ = ["EXTERNAL", "KIND_NAMES", "PRODUCED", "UNINITIALISED", "OpRecord", "OpStream"]
