"""The real 8x8 handwritten digits data set that ships inside scikit-learn.

``sklearn.datasets.load_digits`` reads 1797 labelled 8x8 grey-scale images (digits 0-9)
from files inside the scikit-learn package: nothing is downloaded. This module turns them
into a seeded, deterministic train/test split served by a DataLoader, for CNN recipes and
tests that want real (not synthetic) data while still running in seconds on a CPU.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader

from .synthetic import (
    TensorBatchDataset,
    _check_bool,
    _check_int,
    _check_seed,
    _generator,
    make_loader,
)

__all__ = ["digits", "N_DIGITS"]

#: Number of images in scikit-learn's digits data set.
N_DIGITS = 1797

_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels as float32 ``[1797, 64]`` in [0, 1] and labels int64 ``[1797]`` (cached)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError(
            "gradoctor.data.digits needs scikit-learn, which ships the 8x8 digits data set; "
            "install it with `pip install scikit-learn`"
        ) from exc
    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float32) / 16.0  # raw values are 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def digits(
    batch_size: int = 64,
    split: str = "train",
    flatten: bool = False,
    seed: int = 0,
    shuffle: bool = True,
    test_fraction: float = 0.2,
) -> DataLoader:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) as a DataLoader.

    Pixels are scaled to [0, 1] and then standardized with the mean and standard deviation
    of the *training* split (one scalar each, so train and test use the same transform and
    the test split leaks nothing). The split is a permutation drawn from a private
    generator seeded with ``seed``: the same ``seed`` and ``test_fraction`` always give the
    same disjoint train/test sets, whose sizes add up to 1797; the test split holds
    ``round(1797 * test_fraction)`` images.

    Args:
        batch_size: images per batch (>= 1).
        split: ``"train"`` or ``"test"``.
        flatten: return images as ``[B, 64]`` instead of ``[B, 1, 8, 8]``.
        seed: seeds the train/test split (not the shuffling order, which follows the
            global torch RNG).
        shuffle: reshuffle every epoch.
        test_fraction: share of images held out for the test split, in (0, 1).

    Returns:
        A DataLoader of tuples ``(x, y)``: ``x`` float32 ``[B, 1, 8, 8]`` (or ``[B, 64]``
        with ``flatten=True``), ``y`` int64 ``[B]`` with values 0-9.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: an argument is out of range.
    """
    batch_size = _check_int("batch_size", batch_size)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}; got {split!r}")
    flatten = _check_bool("flatten", flatten)
    seed = _check_seed(seed)
    shuffle = _check_bool("shuffle", shuffle)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )
    n_test = round(N_DIGITS * float(test_fraction))
    if not 1 <= n_test <= N_DIGITS - 1:
        raise ValueError(
            f"test_fraction={test_fraction!r} leaves an empty split "
            f"({n_test} of {N_DIGITS} images for test); use a value between "
            f"{1 / N_DIGITS:.4f} and {1 - 1 / N_DIGITS:.4f}"
        )

    pixels_np, labels_np = _load_raw()
    pixels = torch.from_numpy(pixels_np.copy())
    labels = torch.from_numpy(labels_np.copy())

    perm = torch.randperm(N_DIGITS, generator=_generator(seed))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    train_pixels = pixels[train_idx]
    mean = train_pixels.mean()
    std = train_pixels.std().clamp_min(1e-6)

    idx = train_idx if split == "train" else test_idx
    x = (pixels[idx] - mean) / std
    x = x if flatten else x.view(-1, 1, 8, 8)
    dataset = TensorBatchDataset((x.float().contiguous(), labels[idx].long().contiguous()))
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle)
