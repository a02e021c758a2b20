"""Models whose saved-for-backward tensors are known in closed form (fp32, batch B).

``TwoLayer``: ``fc1 = Linear(D, H) -> act = Tanh -> fc2 = Linear(H, C)``.
  * ``fc1`` (addmm) saves its input x (the batch: 4*B*D bytes) and weight.t() (a parameter view:
    excluded);
  * ``act`` (tanh) saves its output h (4*B*H bytes);
  * ``fc2`` saves its input, the same h (4*B*H, same storage as act's);
  so the model saves 4*B*D + 4*B*H distinct bytes.

``Stack``: ``inp = Linear(D, W)`` then ``depth`` residual ``Block``s ``x + tanh(fc(x))`` and a
head ``Linear(W, C)``; each Block's fc saves its input x (allocated by the previous layer), tanh
saves its output t = tanh(fc(x)) (4*B*W). Checkpointing a Block frees t (created and saved only
inside it) but not x (its input).
"""

import torch
from torch import nn

D, H, C, W = 8, 32, 3, 16


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(H, C)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int = W):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Stack(nn.Module):
    def __init__(self, depth: int = 3, width: int = W):
        super().__init__()
        self.inp = nn.Linear(D, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, C)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def data(batch_size: int = 16, n: int = 256):
    """Classification batches ``(x [B, D] float32, y [B] int64)``; accepts ``batch_size``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False
    )


def fixed_size_data(n: int = 64):
    """Batches of 16 that ignore any batch size: no ``batch_size`` keyword."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, D, generator=g), torch.randint(0, C, (n,), generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


class ResBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)`` with in-place ReLUs, as torchvision's."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class ResNetish(nn.Module):
    """Stem conv, two :class:`ResBlock` s, max-pool, global average pool, linear head.
    Input ``[B, 3, 8, 8]``."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(inplace=True))
        self.layer = nn.Sequential(ResBlock(c), ResBlock(c))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(c, C)

    def forward(self, x):
        return self.head(self.pool(self.layer(self.stem(x))).mean((2, 3)))


class SharedSave(nn.Module):
    """``body = Sequential(Linear, ReLU)`` then ``head = Linear``: the ReLU's output is saved
    both inside ``body`` (by ReLU) and outside it (by ``head``), so checkpointing ``body`` keeps
    it; under autocast the recomputation casts ``body``'s weights again."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, H), nn.ReLU())
        self.head = nn.Linear(H, C)

    def forward(self, x):
        return self.head(self.body(x))


def images(batch_size: int = 8, n: int = 64):
    """``(x [B, 3, 8, 8] float32, y [B] int64)``; accepts ``batch_size``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False
    )


class DropBlock(nn.Module):
    """``x + dropout(gelu(fc(x)))``: the last tensor it saves is dropout's mask, saved before
    the product is computed, so a recomputation stops before allocating that product."""

    def __init__(self, width: int = W):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(torch.nn.functional.gelu(self.fc(x)))


class DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, W)
        self.blocks = nn.ModuleList(DropBlock() for _ in range(2))
        self.head = nn.Linear(W, C)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class TwoOut(nn.Module):
    """Returns ``(u, v)``: ``u`` is saved only by the op after the module (a transient of its
    recomputation), ``v`` (sigmoid's output) inside and after it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(W, W)
        self.b = nn.Linear(W, W)

    def forward(self, x):
        u = torch.tanh(self.a(x)) * 2.0
        return u, torch.sigmoid(self.b(x))


class TwoOutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, W)
        self.blk = TwoOut()
        self.head = nn.Linear(W, C)

    def forward(self, x):
        u, v = self.blk(self.inp(x))
        return self.head(u * v)


class Scaled(nn.Module):
    """Saves ``2 x``, not its input ``x``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(W, W)

    def forward(self, x):
        return torch.tanh(self.fc(x * 2.0))


class GateNet(nn.Module):
    """``blk``'s input is saved by the gate after it: a checkpoint of ``blk`` keeps it alive
    until ``blk``'s backward, past the gate's."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, W)
        self.blk = Scaled()
        self.mid = nn.Linear(W, W)
        self.head = nn.Linear(W, C)

    def forward(self, x):
        x = self.inp(x)
        return self.head(self.mid(self.blk(x) * x))


class TanhChain(nn.Module):
    """``first = Sequential(Linear, Tanh, Linear, Tanh)`` then a head: the first Tanh's output
    is saved by the Tanh and by the Linear after it, which lets go of it first in backward."""

    def __init__(self):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, W), nn.Tanh())
        self.head = nn.Linear(W, C)

    def forward(self, x):
        return self.head(self.first(x))


class Attn(nn.Module):
    """Self-attention through ``nn.MultiheadAttention(s, s, s)``, which takes its packed fast
    path only when ``query is key is value``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, W * 4)
        self.mha = nn.MultiheadAttention(W, 2, batch_first=True)
        self.head = nn.Linear(W, C)

    def forward(self, x):
        s = self.inp(x).view(x.shape[0], 4, W)
        a, _ = self.mha(s, s, s)
        return self.head(a.mean(1))


class EpochData:
    """Builds the epoch's tensors when an epoch starts (the iterator holds them); batches are
    views into them. Accepts ``batch_size``."""

    def __init__(self, batch_size: int = 16, n: int = 48):
        self.batch_size, self.n = batch_size, n

    def __iter__(self):
        x, y = torch.randn(self.n, D), torch.randint(0, C, (self.n,))
        for i in range(0, self.n, self.batch_size):
            yield x[i : i + self.batch_size], y[i : i + self.batch_size]


class ReplacingMomentum(torch.optim.Optimizer):
    """Momentum SGD that replaces its state tensors every step (out of place): the state that
    existed before the step is freed during it."""

    def __init__(self, params, lr: float = 1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["m"] = 0.9 * state["m"] + p.grad if "m" in state else p.grad.clone()
                p.add_(state["m"], alpha=-group["lr"])


class Transposed(nn.Module):
    """Mixes samples through a transpose and reshape, which copies unless the batch has one
    sample: at batch size 1 the step runs other ops than at 2 or more."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, 4 * W)
        self.head = nn.Linear(4 * W, C)

    def forward(self, x):
        b = x.shape[0]
        h = torch.tanh(self.inp(x).view(b, 4, W).transpose(0, 1).reshape(4, b * W))
        return self.head(h.reshape(4, b, W).transpose(0, 1).reshape(b, 4 * W))
