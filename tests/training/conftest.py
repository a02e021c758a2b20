"""Builders for the step / state / snapshot / guard tests: a TrainState without a Trainer."""

from __future__ import annotations

import pytest
import torch

from gradoctor.recipe.schema import GradScalerConfig
from gradoctor.training.data_stream import DataStream
from gradoctor.training.precision import make_scaler
from gradoctor.training.state import TrainState


def linear_batches(n: int = 6, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``n`` regression batches ``(x [batch, 3], y [batch, 2])`` in float32."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, generator=g), torch.randn(batch, 2, generator=g)) for _ in range(n)
    ]


def make_state(
    *,
    model: torch.nn.Module | None = None,
    lr: float = 0.1,
    precision: str = "fp32",
    scheduler: bool = False,
    data: list | None = None,
    optimizer: type = torch.optim.SGD,
) -> TrainState:
    """A linear regression state (MSE, SGD) over ``linear_batches()``."""
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 2)
    opt = optimizer(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    return TrainState(
        model=model,
        optimizer=opt,
        scaler=make_scaler(precision, torch.device("cpu"), GradScalerConfig()),
        scheduler=sched,
        loss_fn=torch.nn.MSELoss(),
        data=DataStream(data if data is not None else linear_batches()),
        device=torch.device("cpu"),
    )


@pytest.fixture
def state() -> TrainState:
    return make_state()
