"""Sums over the ranks of a process group, for curvature of a loss whose batches are spread
over ranks (``hessian_spectrum(..., process_group=...)``).

The Hessian of the mean loss over all ranks' batches is Σ_ranks Σ_local H_b / N_global: each
rank sums its own per-batch HVPs, one ``all_reduce(SUM)`` of that sum (with the batch count
appended) gives every rank the same H·v, and every rank then runs the same Lanczos / eigsh /
Hutch++ iterations in lockstep on identical vectors. Nothing is broadcast: the operator's
output is the all-reduced vector (bitwise the same on every rank, the property DDP's replicas
rely on), the probes come from the same seeded generators, and the host linear algebra is
deterministic for the same inputs (the ranks must run the same numpy/scipy with the same
thread count; torchrun sets ``OMP_NUM_THREADS=1``). Each HVP also sums Σv and (Σv)² over
ranks: a vector that differs between ranks (a different ``v0``, preconditioner or direction
passed on one rank) raises UsageError on every rank instead of mixing two operators.

Failures stay collective too: a computation that raises on one rank still joins the
collective (with a flag set), and then every rank raises — the failing rank its own
exception (a GradoctorError's message prefixed "on rank r of W: "), the others the same
GradoctorError class with the same message, or ``RankFailed`` (a RuntimeError) for any other
exception — so no rank is left waiting in a collective the others never reach. A batch
number in such a message counts that rank's own batches. The messages are gathered
(``all_gather_object``) only when a flag is set.

Cost: one collective of the vector's length plus one (P + 5 float64 for an HVP: ``hvp.py``)
per call, and one host sync; on gloo the vector goes through host memory, on NCCL it stays
on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from gradoctor.errors import GradoctorError, UsageError, UserCodeError


class RankFailed(RuntimeError):
    """Raised on the other ranks when a computation raised a non-gradoctor exception on one
    rank (that rank raises its own). ``fatal``: an out-of-memory error, which ends the
    measurement instead of moving on to another HVP method."""

    def __init__(self, rank: int, world: int, kind: str, message: str, fatal: bool):
        super().__init__(f"rank {rank} of {world} raised {kind}: {message}")
        self.rank, self.kind, self.fatal = rank, kind, fatal


class RankSum:
    """SUM over the ranks of ``group`` (a ``ProcessGroup``; ``torch.distributed.group.WORLD``
    for the default one). ``rank`` and ``world`` are this process's place in it."""

    def __init__(self, group: dist.ProcessGroup):
        if not dist.is_available() or not dist.is_initialized():
            raise UsageError(
                "process_group given, but torch.distributed has no initialised process group",
                hint="call torch.distributed.init_process_group first (torchrun sets the "
                "environment it reads), or leave process_group=None for one process",
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._backend = str(dist.get_backend(group))

    def comm_device(self, device: torch.device) -> torch.device:
        """Where the collective runs for a tensor on ``device``: gloo on the host, NCCL on
        the current CUDA device, a mixed backend (``cpu:gloo,cuda:nccl``) where it is."""
        if self._backend == "gloo":
            return torch.device("cpu")
        if self._backend == "nccl":
            return device if device.type == "cuda" else torch.device("cuda")
        return device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks of ``values`` (a 1-D float64 tensor of the same
        length on every rank), on ``values``' device. One ``all_reduce``."""
        buf = values.to(self.comm_device(values.device)).contiguous()
        if buf.data_ptr() == values.data_ptr():
            buf = buf.clone()  # never reduce into the caller's tensor
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return buf.to(values.device)

    def sum_local(
        self, compute: Callable[[], torch.Tensor], length: int, device: torch.device
    ) -> torch.Tensor:
        """``compute()`` (a ``[length]`` float64 tensor) on this rank, summed over ranks. If it
        raises on any rank, every rank raises after the same collectives (module docstring)."""
        error: Exception | None = None
        try:
            local = compute().reshape(-1).to(device, torch.float64)
        except Exception as exc:  # joins the collective anyway; raised below on every rank
            error, local = exc, torch.zeros(length, dtype=torch.float64, device=device)
        flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
        total = self.sum(torch.cat([local, flag]))
        if total[-1].item() > 0:  # host sync (the caller reads the result on the host anyway)
            self.raise_together(error)
        return total[:-1]

    def raise_together(self, error: Exception | None) -> None:
        """Called by every rank once a collective said some rank failed: gathers the failures
        and raises on every rank (the failing one its own ``error``)."""
        info = None
        if error is not None:
            ours = isinstance(error, GradoctorError)
            info = (
                type(error).__name__,
                error.message if ours else str(error),
                error.hint if ours else None,
                "usage" if isinstance(error, UsageError) else "gradoctor" if ours else "other",
                isinstance(error, torch.OutOfMemoryError),
            )
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, info, group=self.group)
        if isinstance(error, GradoctorError):  # the same message as the other ranks raise
            error.message = f"on rank {self.rank} of {self.world}: {error.message}"
            error.args = (error.message,)
        if error is not None:
            raise error
        rank, (kind, message, hint, family, fatal) = next(
            (r, i) for r, i in enumerate(gathered) if i is not None
        )
        if family == "other":
            raise RankFailed(rank, self.world, kind, message, fatal)
        cls = UsageError if family == "usage" else UserCodeError
        raise cls(f"on rank {rank} of {self.world}: {message}", hint=hint)


def broadcast_module(module: torch.nn.Module, rank_sum: RankSum, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (in place),
    as DDP does when it wraps a model: the ranks then measure the same model even if its
    initialisation is not reproducible across processes. One broadcast per tensor."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            buf = tensor.detach().to(rank_sum.comm_device(tensor.device)).contiguous()
            dist.broadcast(buf, src=dist.get_global_rank(rank_sum.group, src), group=rank_sum.group)
            if buf.data_ptr() != tensor.data_ptr():
                tensor.copy_(buf)


def rank_sum(process_group: dist.ProcessGroup | None) -> RankSum | None:
    """A ``RankSum`` over ``process_group``, or None for one process (``None``)."""
    return None if process_group is None else RankSum(process_group)


def split_batches(batches: list, rank: int, world: int) -> list:
    """This rank's share of a list of batches: batch i goes to rank i % world (how
    ``gradoctor curvature`` spreads its first N batches over ranks)."""
    return [b for i, b in enumerate(batches) if i % world == rank]


__all__ = ["RankFailed", "RankSum", "broadcast_module", "rank_sum", "split_batches"]
