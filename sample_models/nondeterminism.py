"""Models, a data set and an optimizer that are *not* reproducible, each for one reason:
the planted sources ``gradoctor repro`` must find (``tests/reproducibility``).

All of them take ``in_features``/``out_features`` like ``mlp.py:MLP``. Every source differs
between two processes even with the recipe's seed in force:

- ``ClockNoise``: forward noise from a ``torch.Generator`` seeded with the clock (module ``noise``).
- ``ReseedsGlobalGenerator``: re-seeds torch's global generator from the clock, then dropout.
- ``PythonJitter``: scales by ``random.Random()`` (seeded from the OS), a Python number.
- ``NumpyJitter``: adds a tensor made with ``torch.from_numpy`` from an unseeded NumPy generator.
- ``RandomBranch``: takes a ReLU or a tanh branch on an unseeded Python draw (control flow).
- ``UninitialisedScale``: multiplies by ``torch.empty`` memory it never wrote.
- ``StochasticRoundingBackward``: a custom Function whose backward adds clock-seeded noise.
- ``ClockInit``: initialises its weights from a clock-seeded generator.
- ``RacyKernel``: a custom op that sums in an order drawn from the OS (a racy kernel).
- ``DuplicateIndexAdd``: ``index_add_`` with duplicate indices (nondeterministic on CUDA only).
- ``entropy_shuffled``: a data set that shuffles with ``np.random.default_rng()`` (no seed).
- ``ClockNoiseSGD``: an SGD whose update adds clock-seeded noise (the optimizer phase).
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from torch import nn


def _clock_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(time.time_ns())


class _Body(nn.Module):
    """``Linear -> GELU -> <source> -> Linear``: the source sits in a named submodule."""

    def __init__(self, in_features: int, out_features: int, source: nn.Module, hidden: int = 32):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.source = source
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.source(self.act(self.inp(x))))


class _ClockNoise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = _clock_generator(x.device)
        return x + 0.01 * torch.randn(x.shape, generator=g, device=x.device)


class _ReseedThenDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(time.time_ns() % 2**63)
        return self.drop(x)


class _PythonJitter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random()  # seeded from the OS, not from random.seed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + 0.01 * self.rng.random())


class _NumpyJitter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng()  # OS entropy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.from_numpy(self.rng.normal(0.0, 0.01, size=tuple(x.shape)).astype("float32"))
        return x + noise.to(x.device)


class _RandomBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if self.rng.random() < 0.5 else torch.tanh(x)


class _UninitialisedScale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        scale = torch.ones(n, device=x.device)
        for size in (n, 2 * n, 3 * n, 5 * n, 7 * n, 11 * n):  # scratch never fully written:
            buf = torch.empty(size, device=x.device)  # what is left is the heap's leftovers
            buf[: size // 2] = 0.0
            scale = scale + buf[-n:].clamp(-1.0, 1.0).nan_to_num(0.0)
        return x * scale


class _NoisyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        g = _clock_generator(grad.device)
        return grad + 1e-3 * torch.rand(grad.shape, generator=g, device=grad.device)


class _StochasticRounding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoisyBackward.apply(x)


def ClockNoise(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _ClockNoise())


def ReseedsGlobalGenerator(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _ReseedThenDropout())


def PythonJitter(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _PythonJitter())


def NumpyJitter(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _NumpyJitter())


def RandomBranch(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _RandomBranch())


def UninitialisedScale(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _UninitialisedScale())


def StochasticRoundingBackward(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    return _Body(in_features, out_features, _StochasticRounding())


def ClockInit(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    model = _Body(in_features, out_features, nn.Identity())
    with torch.no_grad():
        g = _clock_generator(torch.device("cpu"))
        model.out.weight.copy_(torch.randn(model.out.weight.shape, generator=g) * 0.1)
    return model


def entropy_shuffled(
    batch_size: int = 32, n_samples: int = 256, n_features: int = 20, n_classes: int = 4
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed data set (seeded) whose order is shuffled with an unseeded NumPy generator."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_samples, n_features, generator=g)
    y = torch.randint(0, n_classes, (n_samples,), generator=g)
    order = torch.from_numpy(np.random.default_rng().permutation(n_samples))
    return [
        (x[order[i : i + batch_size]], y[order[i : i + batch_size]])
        for i in range(0, n_samples, batch_size)
    ]


class ClockNoiseSGD(torch.optim.SGD):
    """SGD whose every update adds noise from a clock-seeded generator."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                g = _clock_generator(p.device)
                p.add_(torch.randn(p.shape, generator=g, device=p.device), alpha=1e-4)
        return loss


def _define_racy_row_sum() -> object:
    """``gradoctor_samples::racy_row_sum(x)``: each row's sum ``[B, 1]``, accumulated in an
    order drawn from the OS, as a kernel with atomic adds sums in the order its threads
    arrive: equal inputs, sums that differ in their last bits."""
    import os

    try:  # the file may be loaded more than once (by path); the op is defined once
        return torch.ops.gradoctor_samples.racy_row_sum
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op("gradoctor_samples::racy_row_sum", mutates_args=())
    def racy_row_sum(x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().numpy().astype(np.float32)
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        sums = np.zeros((rows.shape[0], 1), dtype=np.float32)
        for i, row in enumerate(rows):
            for j in rng.permutation(row.shape[0]):
                sums[i, 0] += row[j]
        return torch.from_numpy(sums).to(x.device)

    @racy_row_sum.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], 1))

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.shape = inputs[0].shape

    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad.expand(ctx.shape)

    racy_row_sum.register_autograd(backward, setup_context=setup_context)
    return torch.ops.gradoctor_samples.racy_row_sum


class _Racy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * _define_racy_row_sum()(x)


def RacyKernel(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    """A layer whose kernel sums in a nondeterministic order (``_define_racy_row_sum``)."""
    _define_racy_row_sum()
    return _Body(in_features, out_features, _Racy())


class _DuplicateIndexAdd(nn.Module):
    """``index_add_`` of 64 copies of the batch into 4 rows: on CUDA the atomic adds of the
    duplicates land in an order that varies from run to run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.repeat(64, 1)
        index = torch.arange(rows.shape[0], device=x.device) % 4
        pooled = torch.zeros(4, x.shape[1], device=x.device, dtype=x.dtype)
        pooled.index_add_(0, index, rows)
        return x + 1e-3 * pooled[index[: x.shape[0]]]


def DuplicateIndexAdd(in_features: int = 20, out_features: int = 4) -> nn.Module:  # noqa: N802
    """Nondeterministic on CUDA only (atomics); deterministic mode sorts the indices."""
    return _Body(in_features, out_features, _DuplicateIndexAdd())
