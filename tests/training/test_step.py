"""The one training step: its update against a float64 reference, clipping, the skip rule,
the order of the instrument points, and that instruments change nothing."""

from __future__ import annotations

import contextlib

import pytest
import torch

from gradoctor.monitors.instrument import Instrument
from gradoctor.training.step import StepConfig, TrainStep
from tests.training.conftest import linear_batches, make_state


def _reference_update(w, b, batches, lr, max_norm=None):
    """One SGD step on the mean of the micro-batches' MSE losses, in float64 by hand:
    d/dW mean((xW^T + b - y)^2) = 2/(B*out) * (xW^T + b - y)^T x."""
    w, b = w.double(), b.double()
    gw, gb = torch.zeros_like(w), torch.zeros_like(b)
    for x, y in batches:
        x, y = x.double(), y.double()
        r = x @ w.T + b - y
        scale = 2.0 / r.numel() / len(batches)
        gw += scale * r.T @ x
        gb += scale * r.sum(0)
    if max_norm is not None:
        total = torch.sqrt((gw**2).sum() + (gb**2).sum())
        coef = min(1.0, max_norm / (float(total) + 1e-6))
        gw, gb = gw * coef, gb * coef
    return w - lr * gw, b - lr * gb


@pytest.mark.parametrize("accum", [1, 3])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_update_matches_float64_reference(accum, clip):
    state = make_state(lr=0.1)
    w0, b0 = state.model.weight.detach().clone(), state.model.bias.detach().clone()
    batches = linear_batches()[:accum]
    step = TrainStep(state, StepConfig("fp32", accum_steps=accum, clip_grad_norm=clip))
    outcome = step.run()
    want_w, want_b = _reference_update(w0, b0, batches, 0.1, clip)
    torch.testing.assert_close(state.model.weight.double(), want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.model.bias.double(), want_b, rtol=1e-5, atol=1e-6)
    losses = [torch.nn.functional.mse_loss(x @ w0.T + b0, y) for x, y in batches]
    assert float(outcome.loss) == pytest.approx(float(sum(losses) / accum), rel=1e-6)
    assert state.step == 1 and outcome.samples == 4 * accum and not outcome.skipped
    assert all(p.grad is None for p in state.model.parameters())  # zero_grad(set_to_none)
    step.close()


def test_clipping_equals_clip_grad_norm_bitwise():
    """The step's one clip follows clip_grad_norm_'s rule exactly."""
    a, b = make_state(), make_state()
    TrainStep(a, StepConfig("fp32", clip_grad_norm=0.01)).run()
    x, y = linear_batches()[0]
    torch.nn.functional.mse_loss(b.model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(b.model.parameters(), 0.01)
    b.optimizer.step()
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


class Recording(Instrument):
    """Logs every point it is called at, in order."""

    name = "recording"

    def __init__(self, every: int = 1):
        self.every, self.log = every, []

    def active(self, step):
        return step % self.every == 0

    def _cm(self, what):
        @contextlib.contextmanager
        def cm():
            self.log.append(f"{what}>")
            yield
            self.log.append(f"<{what}")

        return cm()

    def step_start(self, view):
        self.log.append("step_start")

    def forward(self, view):
        return self._cm(f"forward{view.micro}")

    def backward(self, view):
        return self._cm(f"backward{view.micro}")

    def optimizer(self, view):
        return self._cm("optimizer")

    def after_unscale(self, view):
        assert all(p.grad is not None for p in view.model.parameters())
        self.log.append("after_unscale")

    def before_update(self, view):
        self.log.append("before_update")

    def after_update(self, view):
        self.log.append("after_update")

    def step_end(self, view, outcome):
        self.log.append(f"step_end{outcome.step}")


def test_instrument_points_in_order_and_only_when_active():
    state = make_state()
    rec = Recording(every=2)
    step = TrainStep(state, StepConfig("fp32", accum_steps=2))
    step.run([rec])
    assert rec.log == []  # step 1: inactive
    step.run([rec])
    assert rec.log == [
        "step_start",
        "forward0>",
        "<forward0",
        "backward0>",
        "<backward0",
        "forward1>",
        "<forward1",
        "backward1>",
        "<backward1",
        "optimizer>",
        "after_unscale",
        "before_update",
        "after_update",
        "<optimizer",
        "step_end2",
    ]


def test_instruments_do_not_change_the_losses():
    """Bitwise the same losses and weights with a hooking instrument as without it."""

    class Hooks(Instrument):
        def forward(self, view):
            return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)

        def before_update(self, view):
            view.grad_norms()

    runs = []
    for instruments in ([], [Hooks(), Recording()]):
        state = make_state(scheduler=True)
        step = TrainStep(state, StepConfig("fp32", accum_steps=2, clip_grad_norm=0.5))
        runs.append(([float(step.run(instruments).loss) for _ in range(3)], state))
    assert runs[0][0] == runs[1][0]
    for p, q in zip(runs[0][1].model.parameters(), runs[1][1].model.parameters()):
        assert torch.equal(p, q)


def test_dropped_update_is_skipped_and_the_scheduler_waits():
    state = make_state(scheduler=True)
    before = [p.detach().clone() for p in state.model.parameters()]
    step = TrainStep(state, StepConfig("fp32"))
    outcome = step.run(drop_update=lambda view, loss: True)
    assert outcome.skipped and outcome.lr == 0.1
    assert all(torch.equal(p, q) for p, q in zip(state.model.parameters(), before))
    assert state.optimizer.param_groups[0]["lr"] == 0.1  # scheduler not stepped
    assert not step.run().skipped
    assert state.optimizer.param_groups[0]["lr"] == 0.05


def test_fp16_overflow_is_a_skipped_step():
    """A CPU GradScaler: an inf gradient skips the update and halves the scale."""
    data = [(torch.full((4, 3), 1e30), torch.zeros(4, 2))] + linear_batches(2)
    state = make_state(precision="fp16", scheduler=True, data=data)
    before = [p.detach().clone() for p in state.model.parameters()]
    step = TrainStep(state, StepConfig("fp16"))
    outcome = step.run()
    assert outcome.skipped
    assert all(torch.equal(p, q) for p, q in zip(state.model.parameters(), before))
    assert state.scaler.get_scale() == 65536 / 2
    assert state.optimizer.param_groups[0]["lr"] == 0.1


def test_close_leaves_no_hook():
    state = make_state()
    hooks = state.optimizer._optimizer_step_post_hooks
    n = len(hooks)
    step = TrainStep(state, StepConfig("fp32"))
    assert len(hooks) == n + 1
    step.close()
    assert len(hooks) == n
