"""The figures of ``gradoctor explain`` (matplotlib, the Agg backend: no display needed).

``figure(x, attributions, kind)`` draws one example: for images ``[C, H, W]`` the input
(grey for one channel, RGB for three, else the first), the attribution heatmap (summed over
channels; a diverging colormap centred at 0, clipped at the 99th percentile of |values|) and
the overlay of |attributions| on the input; for feature vectors ``[F]`` the attributions as
bars next to the input values; for tokens ``[T]`` the per-token scores as bars labelled by
token id. ``save_png`` writes it; ``tensorboard_figure`` adds it to an event file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def kind_of(x: torch.Tensor, tokens: bool) -> str:
    """``tokens`` | ``image`` (``[C, H, W]`` or ``[H, W]``) | ``vector``, for one example."""
    if tokens:
        return "tokens"
    return "image" if x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1 else "vector"


def _image(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x
    if x.shape[0] == 3:
        img = np.transpose(x, (1, 2, 0))
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return x[0]


def figure(
    x: torch.Tensor,
    attributions: torch.Tensor,
    kind: str,
    title: str,
    labels: list[str] | None = None,
) -> Any:
    """One example's figure (module docstring); the caller closes it."""
    a = attributions.detach().float().cpu().numpy()
    if kind == "image":
        xi = x.detach().float().cpu().numpy()
        heat = a.sum(0) if a.ndim == 3 else a
        lim = float(np.percentile(np.abs(heat), 99)) or 1.0
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        base = _image(xi)
        axes[0].imshow(base, cmap="gray" if base.ndim == 2 else None)
        axes[0].set_title("input")
        im = axes[1].imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1].set_title("attribution")
        fig.colorbar(im, ax=axes[1], fraction=0.046)
        gray = base if base.ndim == 2 else base.mean(-1)
        axes[2].imshow(gray, cmap="gray")
        axes[2].imshow(np.abs(heat), cmap="inferno", alpha=0.6)
        axes[2].set_title("|attribution| over input")
        for ax in axes:
            ax.axis("off")
    else:
        values = a if a.ndim == 1 else a.reshape(a.shape[0], -1).sum(-1)
        fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(values) + 2), 3.2))
        colors = ["#d73027" if v > 0 else "#4575b4" for v in values]
        ax.bar(np.arange(len(values)), values, color=colors)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("token" if kind == "tokens" else "feature")
        ax.set_ylabel("attribution")
        if labels is not None and len(labels) <= 40:
            ax.set_xticks(np.arange(len(values)), labels, rotation=90, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["figure", "kind_of", "save_png"]
