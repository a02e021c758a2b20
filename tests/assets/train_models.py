"""Small models and data for the training-loop tests (loaded by file path from recipes)."""

import torch
from torch import nn


class Tiny(nn.Module):
    """Linear(8, 16) -> ReLU -> Dropout(p) -> Linear(16, 3)."""

    def __init__(self, dropout: float = 0.0, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.head(self.body(x))


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.norm(x)))


class Deep(nn.Module):
    """An input layer, ``depth`` residual Blocks, and a head: for checkpointing tests."""

    def __init__(self, depth: int = 3, width: int = 8):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class _InfGradAt(torch.autograd.Function):
    """Identity forward; backward returns inf gradients on chosen calls (counts backward calls)."""

    @staticmethod
    def forward(ctx, x, owner):
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        owner = ctx.owner
        owner.calls += 1
        if owner.calls in owner.bad_calls:
            return torch.full_like(grad, float("inf")), None
        return grad, None


class OverflowAt(nn.Module):
    """Tiny, but the gradient reaching ``head`` (and everything before it) is inf on the
    backward calls listed in ``bad_calls`` (1-based): a controlled fp16 overflow."""

    def __init__(self, bad_calls=(3,)):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)
        self.calls = 0
        self.bad_calls = set(bad_calls)

    def forward(self, x):
        h = _InfGradAt.apply(torch.relu(self.body(x)), self)
        return self.head(h)


class DictModel(nn.Module):
    """Takes ``model(**batch)`` and returns an object with ``.loss``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x, y):
        class Out:
            pass

        out = Out()
        out.loss = nn.functional.cross_entropy(self.lin(x), y)
        return out


def fixed_data(batch_size: int = 8, n: int = 64, shuffle: bool = False, as_dict: bool = False):
    """A fixed data set (local generator): x [n, 8] float32, y [n] int64 in 0..2."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle)
    if as_dict:
        return [{"x": bx, "y": by} for bx, by in loader]
    return loader


class InterruptingData:
    """``fixed_data`` that sends ``signal_name`` (SIGINT: a Ctrl-C) to this process when batch
    number ``at_batch`` (1-based, counted over the whole run) is fetched — in the middle of a
    step; ``times`` signals at once (2: a second Ctrl-C / SIGTERM before the step ends)."""

    def __init__(
        self, at_batch: int = 7, batch_size: int = 8, signal_name: str = "SIGINT", times: int = 1
    ):
        self.loader = fixed_data(batch_size=batch_size, shuffle=True)
        self.at_batch, self.signal_name, self.times = at_batch, signal_name, times
        self.count = 0

    def __iter__(self):
        import os
        import signal

        for batch in self.loader:
            self.count += 1
            if self.count == self.at_batch:
                for _ in range(self.times):
                    os.kill(os.getpid(), getattr(signal, self.signal_name))
            yield batch


def device_data(batch_size: int = 32, n_batches: int = 4, device: str = "cuda"):
    """Batches that already live on ``device`` (no host-to-device copies in the step)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch_size, 8, generator=g)
        y = (x[:, :3].sum(1) > 0).long()
        out.append((x.to(device), y.to(device)))
    return out


class LogGate(nn.Module):
    """``0 * log(s)``: zero while s > 0, NaN once it goes negative."""

    def forward(self, s):
        return 0.0 * torch.log(s)


class NaNAtStep(nn.Module):
    """Returns its own loss ``CE + s + 0*log(s)``: SGD lowers ``s`` by ``lr`` per step, so with
    s0=1 and lr=0.15 the loss turns NaN at step 8, inside ``gate``, reproducibly."""

    def __init__(self, start: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self.s = nn.Parameter(torch.tensor(start))
        self.gate = LogGate()

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.lin(x), y) + self.s + self.gate(self.s)


class OOMAtCall(Tiny):
    """Tiny, but its forward raises ``torch.OutOfMemoryError`` on call ``at`` (a simulated OOM)."""

    def __init__(self, at: int = 3):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"
            )
        return super().forward(x)


class HugeGradients(Tiny):
    """Tiny whose output is multiplied by 1e4: at fp16's initial loss scale (65536) the scaled
    gradients overflow, so a GradScaler skips the first steps (its calibration)."""

    def forward(self, x):
        return super().forward(x) * 1e4


class LateMomentumSGD(torch.optim.SGD):
    """SGD whose momentum buffers appear only at its ``start``-th step (state created late, as
    by an optimizer with a warm-up phase): the first applied step is not yet the steady state."""

    def __init__(self, params, lr=1e-3, start=2):
        super().__init__(params, lr=lr)
        self.calls, self.start = 0, start

    @torch.no_grad()
    def step(self, closure=None):
        self.calls += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.calls >= self.start:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.mul_(0.9).add_(p.grad)
                    p.add_(buf, alpha=-group["lr"])
                else:
                    p.add_(p.grad, alpha=-group["lr"])


class TupleOut(Tiny):
    """Tiny returning ``(logits, hidden)``, as many library models do."""

    def forward(self, x):
        return super().forward(x), x


class FailingData:
    """``fixed_data`` (shuffled) that raises ``OSError`` when batch number ``at_batch`` (1-based,
    counted over the run) is fetched; ``at_batch: 0`` never raises (the fixed data set)."""

    def __init__(self, at_batch: int = 4, batch_size: int = 8):
        self.loader = fixed_data(batch_size=batch_size, shuffle=True)
        self.at_batch, self.count = at_batch, 0

    def __iter__(self):
        for batch in self.loader:
            self.count += 1
            if self.count == self.at_batch:
                raise OSError("read error on shard 3 (simulated)")
            yield batch


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fail):
        ctx.fail = fail
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.fail:
            raise RuntimeError("custom backward failed (simulated)")
        return grad, None


class FailingNorm(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout(0.3) -> Linear, whose forward call number ``at``
    raises after BatchNorm and dropout ran (their running statistics and the RNG have moved;
    ``host_rng``: Python's and NumPy's RNGs too);
    ``where: backward`` raises in that call's backward instead. ``at: 0`` never raises."""

    def __init__(self, at: int = 4, where: str = "forward", host_rng: bool = False):
        super().__init__()
        self.host_rng = host_rng  # also scale by draws from Python's and NumPy's RNGs
        self.fc = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)
        self.at, self.where, self.calls = at, where, 0

    def forward(self, x):
        self.calls += 1
        h = self.drop(torch.relu(self.norm(self.fc(x))))
        if self.host_rng:
            import random

            import numpy as np

            h = h * (1 + 0.1 * random.random() + 0.1 * float(np.random.rand()))
        fail = self.calls == self.at
        if fail and self.where == "forward":
            raise ValueError("shape check failed in forward (simulated)")
        return self.head(_RaiseInBackward.apply(h, fail and self.where == "backward"))


class FailingSGD(torch.optim.SGD):
    """SGD whose step number ``at`` raises after it has updated the weights."""

    def __init__(self, params, lr=1e-2, at=3):
        super().__init__(params, lr=lr)
        self.at, self.calls = at, 0

    def step(self, closure=None):
        super().step(closure)
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("optimizer failed after its update (simulated)")


class FailingScheduler(torch.optim.lr_scheduler.LambdaLR):
    """A constant schedule whose own code raises at its ``at``-th step (counted from 1)."""

    def __init__(self, optimizer, at: int = 6):
        self.at = at
        super().__init__(optimizer, lambda epoch: 1.0)

    def step(self, epoch=None):
        if self.last_epoch + 1 == self.at:
            raise ZeroDivisionError("warm-up ratio divided by zero (simulated)")
        super().step(epoch)


class FunctionalDropout(Tiny):
    """Tiny with ``F.dropout(training=True)`` in forward: a loss that is random even with the
    dropout modules switched off."""

    def forward(self, x):
        return super().forward(torch.nn.functional.dropout(x, 0.2, training=True))
