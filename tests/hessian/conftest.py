"""Tiny models for the curvature tests and their dense Hessians (the independent truth).

The truth is ``torch.autograd.functional.hessian`` of the mean loss as a function of the flat
parameter vector, in float64, evaluated through ``torch.func.functional_call`` with fresh
buffer clones: it shares no code with gradoctor.hessian (no Lanczos, no flattening of ours,
no fallback). Not ``torch.func.hessian`` or ``jacrev(jacrev(.))``: through BatchNorm in train
mode both are 2-3% wrong in torch 2.13 (CPU), where central differences of gradients, this
one and both HVP methods agree to 1e-7 (test_hvp.py keeps that finite-difference check).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn
from torch.func import functional_call


@dataclass
class Problem:
    """A model, its batches, a loss ``loss_fn(model, batch)`` and the dense truth."""

    model: nn.Module
    batches: list[Any]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in trainable(self.model).values()])

    def loss_of_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean loss over batches at the flat parameter vector ``flat`` ([P])."""
        params, offset = {}, 0
        for name, p in trainable(self.model).items():
            params[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        losses = []
        for batch in self.batches:
            buffers = {n: b.clone() for n, b in self.model.named_buffers()}
            x, y = batch
            out = functional_call(self.model, {**params, **buffers}, (x,))
            losses.append(self.criterion(out, y))
        return torch.stack(losses).mean()

    def criterion(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def dense_hessian(self) -> torch.Tensor:
        """[P, P] float64 Hessian of the mean loss (symmetrised against rounding)."""
        h = torch.autograd.functional.hessian(self.loss_of_flat, self.flat_params(), vectorize=True)
        return 0.5 * (h + h.T)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def classification_batches(
    n_batches: int, batch_size: int, shape: tuple[int, ...], classes: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (batch_size,), generator=g),
        )
        for _ in range(n_batches)
    ]


def tanh_mlp(seed: int = 0) -> nn.Module:
    """10 -> 64 -> 32 -> 3, tanh: P = 2883."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 3)
    ).double()


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Run this package single-threaded (package scope, autouse: set before the package-scoped
    models are built). The models are tiny, and two intra-op threads on a 2-core machine
    shared with another process spin-wait on each other (measured: a 64x64 matmul 600x
    slower; 100 Hutch++ runs on the MLP Hessian 63 s instead of 4.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # numpy's BLAS too (Hutch++, Lanczos on the host)
        yield
    torch.set_num_threads(threads)


class BatchNormCNN(nn.Module):
    """conv(1->8, 3x3) BN tanh conv(8->8, 3x3) BN tanh avg-pool linear(8->3): P = 723."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class TinyAttention(nn.Module):
    """One self-attention layer through F.scaled_dot_product_attention, mean-pooled: P = 243."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for z in self.qkv(x).chunk(3, dim=-1)
        )
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, t, d).mean(dim=1))


@pytest.fixture(scope="package")
def cnn_problem() -> Problem:
    torch.manual_seed(0)
    model = BatchNormCNN().double().train()
    return Problem(model, classification_batches(2, 16, (1, 8, 8), 3, seed=1), cross_entropy_loss)


def trained_mlp_problem() -> Problem:
    """The tanh MLP after 50 full-batch Adam steps on a teacher MLP's labels (64 samples in
    2 batches): near a minimum, so H is nearly PSD (trace 0.454, Σ|λ| 0.637; λ1 = 0.0548,
    λ2 = 0.0419). At initialisation it is far from PSD (trace 5.1, Σ|λ| 59)."""
    model, teacher = tanh_mlp(0), tanh_mlp(1)
    with torch.no_grad():
        batches = [(x, teacher(x).argmax(1)) for x, _ in classification_batches(2, 32, (10,), 3)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        loss = sum(cross_entropy_loss(model, b) for b in batches) / len(batches)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return Problem(model, batches, cross_entropy_loss)


@pytest.fixture(scope="package")
def cnn_hessian(cnn_problem: Problem) -> torch.Tensor:
    """The CNN problem's dense [723, 723] Hessian with batch statistics (~2 s)."""
    return cnn_problem.dense_hessian()


@pytest.fixture(scope="package")
def mlp_problem() -> Problem:
    return trained_mlp_problem()


@pytest.fixture(scope="package")
def mlp_hessian(mlp_problem: Problem) -> torch.Tensor:
    """The MLP problem's dense [2883, 2883] Hessian (~3-4 s)."""
    return mlp_problem.dense_hessian()


@pytest.fixture(scope="package")
def mlp_eigenvalues(mlp_hessian: torch.Tensor) -> torch.Tensor:
    """All 2883 eigenvalues of the MLP Hessian, descending (~1 s)."""
    return torch.linalg.eigvalsh(mlp_hessian).flip(0)
