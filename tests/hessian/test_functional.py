"""Flat parameter layout and the functional loss."""

from __future__ import annotations

import torch
from torch import nn

from gradoctor.hessian.functional import FunctionalLoss, ParamLayout
from gradoctor.hessian.hvp import HessianVectorProduct


class Tied(nn.Module):
    """An encoder and decoder sharing one weight W, a frozen layer and a BatchNorm:
    norm(frozen(W tanh(W x)))."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4, bias=False)
        self.dec = nn.Linear(4, 4, bias=False)
        self.dec.weight = self.enc.weight
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.norm(self.frozen(self.dec(torch.tanh(self.enc(x)))))


def test_layout_takes_trainable_parameters_once_in_order_and_round_trips():
    model = Tied()
    layout = ParamLayout.of(model, None)
    assert layout.names == ("enc.weight", "norm.weight", "norm.bias")  # tied weight once
    assert layout.size == 16 + 4 + 4 and layout.offsets == (0, 16, 20)
    flat = torch.arange(24, dtype=torch.float64)
    assert torch.equal(layout.flatten(layout.unflatten(flat)), flat)
    assert layout.unflatten(flat)["enc.weight"].dtype == torch.float32
    assert layout.precision() == "fp32"
    assert ParamLayout.of(model, torch.float64).precision() == "fp64"
    assert layout.module_blocks() == {"enc": [0], "norm": [1, 2]}


def test_a_tied_weight_gets_the_hessian_of_the_shared_parameter():
    """Against the same network written with one W explicitly (torch.autograd.functional)."""
    model = Tied().double().train()
    x = torch.randn(6, 4, dtype=torch.float64)
    layout = ParamLayout.of(model, None)
    floss = FunctionalLoss(model, lambda m, b: m(b).square().mean(), [x], layout, None)

    def explicit(flat):
        w, gamma, beta = flat[:16].view(4, 4), flat[16:20], flat[20:]
        h = model.frozen(torch.tanh(x @ w.T) @ w.T)
        h = torch.nn.functional.batch_norm(h, None, None, gamma, beta, training=True)
        return h.square().mean()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    v = torch.randn(24, dtype=torch.float64)
    _, expected = torch.autograd.functional.hvp(explicit, theta, v)
    assert torch.allclose(HessianVectorProduct(floss)(v), expected, rtol=1e-12, atol=1e-14)


def test_a_dtype_casts_parameters_buffers_frozen_layers_and_batches():
    model = Tied().train()
    layout = ParamLayout.of(model, torch.float64)
    batch = {"x": torch.randn(5, 4), "ids": torch.arange(5)}
    seen = {}

    def loss_fn(m, b):
        seen["x"], seen["ids"] = b["x"].dtype, b["ids"].dtype
        return m(b["x"]).square().mean()

    floss = FunctionalLoss(model, loss_fn, [batch], layout, torch.float64)
    loss = floss.mean_loss()
    assert loss.dtype == torch.float64 and seen == {"x": torch.float64, "ids": torch.int64}
    assert model.norm.running_mean.dtype == torch.float32  # the model itself is untouched
    assert int(model.norm.num_batches_tracked) == 0  # clones took the update
