"""Integrated Gradients' baselines: what "the absence of the input" means — the question the
attribution answers changes with it (Sturmfels et al. 2020, "Visualizing the impact of feature
attribution baselines").

- ``zero``: all zeros (for images normalised around 0: "black/grey"; for embeddings: the zero
  vector).
- ``mean``: the mean example of the explained batch (per feature).
- ``blur``: the input blurred (Gaussian, σ = ``blur_sigma`` pixels over the last two
  dimensions): keeps the colours, removes the edges (images only; other inputs: ``zero``).
- ``uniform``: uniform noise over each example's value range (seeded).
- ``noise``: the input plus Gaussian noise of ``noise`` × its range (seeded).

Every random baseline draws from its own seeded generator, never from the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from gradoctor.errors import UsageError

KINDS = ("zero", "mean", "blur", "uniform", "noise")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    flat = x.reshape(-1, 1, x.shape[-2], x.shape[-1])
    padded = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    padded = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    return out.reshape(x.shape)


def make_baseline(
    kind: str,
    x: torch.Tensor,
    *,
    blur_sigma: float = 2.0,
    noise: float = 0.15,
    seed: int = 0,
) -> torch.Tensor:
    """The baseline of ``kind`` for ``x`` ``[B, ...]`` (module docstring)."""
    if kind not in KINDS:
        raise UsageError(f"unknown baseline '{kind}'", hint="one of " + " | ".join(KINDS))
    gen = torch.Generator().manual_seed(seed)
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(0, keepdim=True).expand_as(x).clone()
    if kind == "blur":
        if x.dim() < 3:
            return torch.zeros_like(x)
        return _gaussian_blur(x, blur_sigma)
    flat = x.reshape(x.shape[0], -1)
    lo = flat.amin(1).reshape((-1,) + (1,) * (x.dim() - 1))
    hi = flat.amax(1).reshape((-1,) + (1,) * (x.dim() - 1))
    if kind == "uniform":
        u = torch.rand(x.shape, generator=gen).to(x.device, x.dtype)
        return lo + u * (hi - lo)
    eps = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return x + eps * noise * (hi - lo)


__all__ = ["KINDS", "make_baseline"]
