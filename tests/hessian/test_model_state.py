"""measurement_state: dropout off, everything restored."""

from __future__ import annotations

import torch
from torch import nn

from gradoctor.hessian.model_state import measurement_state


def test_dropout_modules_are_switched_off_and_restored():
    model = nn.Sequential(
        nn.Linear(3, 3),
        nn.Dropout(0.1),
        nn.AlphaDropout(0.2),
        nn.FeatureAlphaDropout(0.2),
        nn.Dropout3d(0.0),  # p = 0: nothing to disable
        nn.BatchNorm1d(3),
    ).train()
    model[2].eval()  # already off: not reported
    with measurement_state(model) as state:
        assert state.disabled_dropout == ["1", "3"]
        assert not model[1].training and not model[3].training
        assert model.training and model[5].training  # the rest stays in train mode
        assert "2 module(s): 1, 3" in state.notes()[0]
    assert model[1].training and not model[2].training and model[3].training


def test_buffers_flags_and_grads_are_restored_even_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    weight, grad = model[0].weight, torch.ones(2, 2)
    weight.grad = grad
    running_mean = model[1].running_mean
    before = running_mean.clone()
    try:
        with measurement_state(model):
            model(torch.randn(4, 2))  # a loss function that runs the live model
            model[1].running_mean = torch.zeros(2)  # ... or replaces a buffer
            weight.requires_grad_(False)
            weight.grad = None
            raise RuntimeError("user code failed")
    except RuntimeError:
        pass
    assert model[1].running_mean is running_mean and torch.equal(running_mean, before)
    assert int(model[1].num_batches_tracked) == 0
    assert weight.requires_grad and weight.grad is grad
