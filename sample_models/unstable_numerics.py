"""Numerically unstable patterns, each in several spellings, for ``gradoctor audit``
(``tests/numerics``), and stable reference models that must raise no warning.

``Unstable(family=..., spelling=..., scale=1.0, offset=0.0)`` is ``Linear(in, 16) -> GELU ->
source -> Linear(16, out)``; the submodule ``source`` applies the pattern to ``h * scale +
offset`` (``scale`` moves it from harmless to failing). Families (``SPELLINGS``): the codes of
``gradoctor.numerics.findings``. Spellings: ``functional`` (torch.* calls), ``method``
(tensor methods), ``module`` (inside a child module ``source.inner``), ``function`` (inside a
custom ``autograd.Function``), and a few family-specific ones.

Stable references (each takes ``in_features``/``out_features`` like ``mlp.py:MLP``, or digits
images for ``ResNetish``): ``TransformerBlock`` (``nn.TransformerEncoderLayer``), ``ResNetish``
(BatchNorm residual CNN), ``LSTMClassifier``, ``StableHeads`` (softmax, log_softmax,
logsumexp, logsigmoid, var, vector_norm, normalize, BCE-with-logits: the stable spellings).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Pattern = Callable[[torch.Tensor], torch.Tensor]


def _as_function(fn: Pattern) -> Pattern:
    """``fn`` run inside a custom autograd.Function (straight-through backward)."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
            return fn(h)

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
            return grad

    return Fn.apply


def _bce_target(h: torch.Tensor) -> torch.Tensor:
    return (h < 0).to(h.dtype)  # the opposite of what a saturated logit says: a clamped log


def _row_mask(h: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(h)
    mask[0] = 0.0  # one row of zeros: its norm is exactly 0
    return h * mask


SPELLINGS: dict[str, dict[str, Pattern]] = {
    "naive_softmax": {
        "functional": lambda h: torch.exp(h) / torch.sum(torch.exp(h), dim=-1, keepdim=True),
        "method": lambda h: h.exp() / h.exp().sum(-1, keepdim=True),
        "shared": lambda h: (lambda e: e / e.sum(dim=-1, keepdim=True))(h.exp()),
    },
    "naive_logsumexp": {
        "functional": lambda h: h - torch.log(torch.sum(torch.exp(h), -1, keepdim=True)),
        "method": lambda h: h - h.exp().sum(-1, keepdim=True).log(),
    },
    "log_of_softmax": {
        "functional": lambda h: torch.log(F.softmax(h, dim=-1)),
        "method": lambda h: h.softmax(-1).log(),
        "softmax_module": lambda h: torch.log(nn.Softmax(dim=-1)(h)),
    },
    "log_of_sigmoid": {
        "functional": lambda h: torch.log(torch.sigmoid(h)),
        "method": lambda h: h.sigmoid().log(),
        "bce": lambda h: h + 1e-3 * F.binary_cross_entropy(torch.sigmoid(h), _bce_target(h)),
        "bce_module": lambda h: h + 1e-3 * nn.BCELoss()(nn.Sigmoid()(h), _bce_target(h)),
    },
    "naive_variance": {
        "functional": lambda h: (
            h * (torch.mean(h**2, -1, keepdim=True) - torch.mean(h, -1, keepdim=True) ** 2)
        ),
        "method": lambda h: h * ((h * h).mean(-1, keepdim=True) - h.mean(-1, keepdim=True).pow(2)),
        "square": lambda h: (
            h
            * (
                torch.mean(torch.square(h), -1, keepdim=True)
                - torch.square(torch.mean(h, -1, keepdim=True))
            )
        ),
        "sum_over_n": lambda h: (
            h
            * (
                (h * h).sum(-1, keepdim=True) / h.shape[-1]
                - (h.sum(-1, keepdim=True) / h.shape[-1]) ** 2
            )
        ),
    },
    "sqrt_at_zero": {
        "functional": lambda h: (
            h / (1 + torch.sqrt(torch.sum(_row_mask(h) ** 2, -1, keepdim=True)))
        ),
        "method": lambda h: h / (1 + (_row_mask(h) * _row_mask(h)).sum(-1, keepdim=True).sqrt()),
        "pow_half": lambda h: h / (1 + _row_mask(h).pow(2).sum(-1, keepdim=True).pow(0.5)),
    },
    "unguarded_division": {
        "functional": lambda h: torch.div(h, torch.linalg.vector_norm(h, dim=-1, keepdim=True)),
        "method": lambda h: h / h.norm(dim=-1, keepdim=True),
        "std": lambda h: (h - h.mean(-1, keepdim=True)) / h.std(-1, keepdim=True),
        "reciprocal": lambda h: h * h.abs().sum(-1, keepdim=True).reciprocal(),
    },
    "log_of_zero": {
        "functional": lambda h: h + 1e-3 * torch.log(torch.relu(h)).clamp(min=-50),
        "method": lambda h: h + 1e-3 * h.relu().log().clamp(min=-50),
        "abs": lambda h: h + 1e-3 * torch.log(h.abs()),
    },
    "overflow_risk": {
        "functional": lambda h: torch.mul(h, 2e4),
        "method": lambda h: h.mul(2e4),
    },
    "underflow": {
        "functional": lambda h: torch.mul(h, 1e-13),
        "method": lambda h: h.mul(1e-13),
    },
}


class _Inner(nn.Module):
    def __init__(self, fn: Pattern):
        super().__init__()
        self.fn = fn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fn(h)


class _Source(nn.Module):
    def __init__(self, fn: Pattern, spelling: str, scale: float, offset: float):
        super().__init__()
        self.scale, self.offset, self.spelling = scale, offset, spelling
        if spelling == "module":
            self.inner = _Inner(fn)
        self.fn = _as_function(fn) if spelling == "function" else fn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h * self.scale + self.offset
        return self.inner(h) if self.spelling == "module" else self.fn(h)


class _Net(nn.Module):
    def __init__(self, in_features: int, out_features: int, source: nn.Module, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.source = source
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.source(self.act(self.inp(x))))


def Unstable(  # noqa: N802
    in_features: int = 20,
    out_features: int = 4,
    family: str = "naive_softmax",
    spelling: str = "functional",
    scale: float = 1.0,
    offset: float = 0.0,
) -> nn.Module:
    """The model with one planted pattern (module docstring). ``spelling`` is a key of
    ``SPELLINGS[family]``, or ``module`` / ``function`` (the ``functional`` spelling inside a
    child module / a custom autograd.Function)."""
    table = SPELLINGS[family]
    fn = table["functional"] if spelling in ("module", "function") else table[spelling]
    return _Net(in_features, out_features, _Source(fn, spelling, scale, offset))


class _Sensitive(nn.Module):
    """Activations carried next to a large offset and taken back: (h + 1000) - 1000. In fp32
    (spacing 6e-5 at 1000) h survives; in bf16 (spacing 8) or fp16 (0.5) it is rounded away —
    a precision-sensitive layer, with no unstable pattern of its own."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h + 1000.0) - 1000.0


class PrecisionSensitive(nn.Module):
    """``Linear -> GELU -> Linear -> sensitive -> Linear``: the precision audit must rank
    ``sensitive`` first by local error."""

    def __init__(self, in_features: int = 20, out_features: int = 4, hidden: int = 32):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.mid = nn.Linear(hidden, hidden)
        self.sensitive = _Sensitive()
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.sensitive(self.mid(self.act(self.inp(x)))))


# ---- stable references ---------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """Features as a sequence of 5 tokens of 4 -> d_model 32 -> nn.TransformerEncoderLayer."""

    def __init__(self, in_features: int = 20, out_features: int = 4, d_model: int = 32):
        super().__init__()
        self.tokens = in_features // 4
        self.embed = nn.Linear(4, d_model)
        self.block = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.embed(x.view(x.shape[0], self.tokens, 4)))
        return self.head(h.mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self, in_features: int = 20, out_features: int = 4, hidden: int = 32):
        super().__init__()
        self.tokens = in_features // 4
        self.lstm = nn.LSTM(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.view(x.shape[0], self.tokens, 4))
        return self.head(out[:, -1])


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    """A small BatchNorm residual CNN for ``gradoctor.data.digits`` ([B, 1, 8, 8])."""

    def __init__(self, n_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(_Residual(width), _Residual(width))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class StableHeads(nn.Module):
    """The stable spellings of every family, side by side: none may be reported."""

    def __init__(self, in_features: int = 20, out_features: int = 4, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.out = nn.Linear(6 * hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        parts = [
            torch.softmax(h, -1),
            torch.log_softmax(h, -1),
            h - torch.logsumexp(h, -1, keepdim=True),
            F.logsigmoid(h),
            h * torch.var(h, -1, keepdim=True, unbiased=False),
            F.normalize(h, dim=-1) + torch.linalg.vector_norm(h, dim=-1, keepdim=True),
        ]
        z = h - h.amax(-1, keepdim=True)
        parts[0] = parts[0] + torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)  # shifted
        return self.out(torch.cat(parts, -1)) + 1e-3 * F.binary_cross_entropy_with_logits(
            h, (h > 0).to(h.dtype)
        )
