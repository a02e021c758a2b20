"""Layers with planted gradient bugs, one kind each; `gradoctor check-grads` must catch all.

    gradoctor check-grads tests/assets/gradcheck/buggy_layers.py

Each docstring says what is wrong; tests/gradcheck/test_corpus.py holds the expected check
and pattern per class.
"""

import torch
from torch import nn


def _contiguous_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


class DoubledSin(torch.autograd.Function):
    """sin(x), backward 2 cos(x): constant factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * x.cos()

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class FlippedExp(torch.autograd.Function):
    """exp(x), backward -exp(x): sign flipped."""

    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return -grad * y

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class ScaleMissingGrad(torch.autograd.Function):
    """x * w with w's gradient never returned: zero (gradient missing) for w."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, None

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4), torch.randn(4))


class SquareMatmul(torch.autograd.Function):
    """x @ W with a square W; grad_W returned transposed."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w.T, (x.T @ grad).T

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 5), torch.randn(5, 5))


class FirstSampleWeightGrad(torch.autograd.Function):
    """x @ W^T; grad_W uses only sample 0. Right at batch 1 (the example), wrong at > 1."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad[:1].T @ x[:1]

    @staticmethod
    def example_inputs():
        return (torch.randn(1, 4), torch.randn(3, 4))


class LeakyBackward(torch.autograd.Function):
    """2x per sample; backward adds 0.1 x the other samples' gradients (off-diagonal blocks)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad + 0.1 * (grad.sum(0, keepdim=True) - grad)

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class NeedsInputGradOrder(torch.autograd.Function):
    """x * w; backward packs only the needed gradients, so they shift position when
    x does not require grad."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grads = []
        if ctx.needs_input_grad[0]:
            grads.append(grad * w)
        if ctx.needs_input_grad[1]:
            grads.append(grad * x)
        return tuple(grads) + (None,) * (2 - len(grads))

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4), torch.randn(3, 4))


class SoftplusBadBranch(torch.autograd.Function):
    """Stable softplus whose large-x branch has gradient 0 instead of 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 20, torch.zeros_like(x), torch.sigmoid(x))

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 6),)


class DetachedCube(torch.autograd.Function):
    """x**3 with backward 3 x.detach()**2: right once, wrong in double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x.detach() ** 2

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class AssumesContiguousGrad(torch.autograd.Function):
    """3x; backward reads grad_output's memory as if it were contiguous."""

    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, grad):
        g = grad.as_strided(grad.shape, _contiguous_strides(grad.shape), grad.storage_offset())
        return 3 * g

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class StashedOnCtx(torch.autograd.Function):
    """sin(x) keeping x on ctx instead of save_for_backward: in-place changes go unseen."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.x.cos()

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class CountingBackward(torch.autograd.Function):
    """2x; backward scales by a counter it increments: a second backward differs."""

    @staticmethod
    def forward(ctx, x):
        ctx.calls = 0
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        ctx.calls += 1
        return 2 * grad * ctx.calls

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class NaiveSoftmax(nn.Module):
    """exp(x) / sum exp(x): overflows in float32 for large inputs (float64 is finite)."""

    def forward(self, x):
        e = x.exp()
        return e / e.sum(-1, keepdim=True)

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 5),)


class RegeneratedDropout(torch.autograd.Function):
    """Dropout whose backward draws a new mask instead of reusing the forward's."""

    @staticmethod
    def forward(ctx, x):
        return x * (torch.rand_like(x) > 0.5).to(x.dtype) * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * (torch.rand_like(grad) > 0.5).to(grad.dtype) * 2

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 6),)


class Float32Grad(torch.autograd.Function):
    """2x; backward returns a float32 gradient whatever the input's dtype."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return (2 * grad).float()

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class CentersOverBatch(nn.Module):
    """x - x.mean(0): normalises over the batch without saying so (forward mixes samples)."""

    def forward(self, x):
        return torch.tanh(x - x.mean(0, keepdim=True))

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 3),)


class ReadsAsContiguous(torch.autograd.Function):
    """2x; forward reads the input's memory as if it were contiguous."""

    @staticmethod
    def forward(ctx, x):
        flat = x.as_strided(x.shape, _contiguous_strides(x.shape), x.storage_offset())
        return 2 * flat

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class OneWrongEntry(torch.autograd.Function):
    """sin(x) on 40x50 = 2000 inputs; backward wrong (x1.5) at element [17, 33] only."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = grad * x.cos()
        if g.shape[0] > 17:
            g[17, 33] = g[17, 33] * 1.5
        return g

    @staticmethod
    def example_inputs():
        return (torch.randn(40, 50),)
