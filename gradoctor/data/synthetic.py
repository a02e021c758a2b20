"""Synthetic, seeded data sets for recipes, tests and demos.

Every component returns a :class:`torch.utils.data.DataLoader` that can be iterated again
each epoch. The *data* are generated once, with a private ``torch.Generator`` seeded from
``seed``, so the data set does not depend on (and does not disturb) the global RNG state.
*Shuffling*, by contrast, deliberately uses the DataLoader's default sampler
(``generator=None``), which draws its per-epoch permutation from the global torch RNG.
gradoctor seeds and checkpoints that RNG, which is what makes a resumed run bitwise
identical to an uninterrupted one.

Batch structures:

* :func:`synthetic_classification` -> ``(x, y)`` with ``x`` float32 ``[B, n_features]``
  and ``y`` int64 ``[B]`` (class indices in ``[0, n_classes)``).
* :func:`synthetic_regression` -> ``(x, y)`` with ``x`` float32 ``[B, n_features]`` and
  ``y`` float32 ``[B, n_targets]``.
* :func:`token_sequences` -> ``{"input_ids": int64 [B, T], "labels": int64 [B, T]}``
  where ``labels[:, t]`` is the token that follows ``input_ids[:, t]``.

Tuple batches are real ``tuple`` objects (not lists); the last batch of an epoch may be
smaller than ``batch_size`` (``drop_last=False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "TensorBatchDataset",
    "make_loader",
    "synthetic_classification",
    "synthetic_regression",
    "token_sequences",
]


# --------------------------------------------------------------------------- helpers


class TensorBatchDataset(Dataset):
    """A map-style data set over equally long tensors, returning whole batches at once.

    ``tensors`` is either a tuple of tensors (items and batches are tuples in the same
    order) or a mapping of name -> tensor (items and batches are dicts). Batches are built
    with one ``index_select`` per tensor through ``__getitems__``, which the DataLoader uses
    instead of per-sample indexing plus ``default_collate``.
    """

    def __init__(self, tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]):
        if isinstance(tensors, Mapping):
            self._names: tuple[str, ...] | None = tuple(tensors)
            self._tensors = tuple(tensors.values())
        else:
            self._names = None
            self._tensors = tuple(tensors)
        if not self._tensors:
            raise ValueError("TensorBatchDataset needs at least one tensor")
        n = self._tensors[0].shape[0]
        if any(t.shape[0] != n for t in self._tensors):
            raise ValueError("all tensors of a TensorBatchDataset must have the same first dim")
        self._len = int(n)

    def __len__(self) -> int:
        return self._len

    def _pack(self, parts: tuple[torch.Tensor, ...]):
        if self._names is None:
            return parts
        return dict(zip(self._names, parts, strict=True))

    def __getitem__(self, index: int):
        return self._pack(tuple(t[index] for t in self._tensors))

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._pack(tuple(t.index_select(0, idx) for t in self._tensors))

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The full underlying tensors, in order (useful for tests and inspection)."""
        return self._tensors


def _batch_passthrough(batch):
    """collate_fn for :class:`TensorBatchDataset`: batches arrive already collated."""
    return batch


def make_loader(dataset: TensorBatchDataset, *, batch_size: int, shuffle: bool) -> DataLoader:
    """Wrap ``dataset`` in the DataLoader every built-in component returns.

    ``num_workers=0``, ``drop_last=False``, and no private shuffling generator: with
    ``shuffle=True`` each epoch's order is drawn from the global torch RNG.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=0,
        drop_last=False,
        collate_fn=_batch_passthrough,
        generator=None,
    )


def _check_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return value


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


# --------------------------------------------------------------------------- components


def synthetic_classification(
    batch_size: int = 32,
    n_samples: int = 2048,
    n_features: int = 20,
    n_classes: int = 4,
    noise: float = 0.5,
    seed: int = 0,
    shuffle: bool = True,
) -> DataLoader:
    """Gaussian-cluster classification: a quick, learnable task for an MLP.

    Each class owns two cluster centres drawn from ``N(0, I)`` in ``n_features``
    dimensions (so classes are not one blob each and the decision boundary is not linear);
    a sample is a centre of its class plus ``noise * N(0, I)``. Labels are balanced up to
    rounding. A small MLP trained with CrossEntropy and AdamW (lr 1e-3) drops from about
    ``log(n_classes)`` to well below half of it within ~100 steps at the defaults.

    Args:
        batch_size: samples per batch (>= 1).
        n_samples: size of the data set (>= 1).
        n_features: input dimension F (>= 1).
        n_classes: number of classes C (>= 2).
        noise: standard deviation of the per-feature noise around the centres (>= 0);
            larger means harder.
        seed: seeds the data (not the shuffling order, which follows the global RNG).
        shuffle: reshuffle every epoch.

    Returns:
        A DataLoader of tuples ``(x, y)``: ``x`` float32 ``[B, F]``, ``y`` int64 ``[B]``.
    """
    batch_size = _check_int("batch_size", batch_size)
    n_samples = _check_int("n_samples", n_samples)
    n_features = _check_int("n_features", n_features)
    n_classes = _check_int("n_classes", n_classes, minimum=2)
    noise = _check_float("noise", noise)
    seed = _check_seed(seed)
    shuffle = _check_bool("shuffle", shuffle)

    g = _generator(seed)
    clusters_per_class = 2
    centres = torch.randn(n_classes * clusters_per_class, n_features, generator=g)
    y = torch.arange(n_samples) % n_classes
    y = y[torch.randperm(n_samples, generator=g)]
    which = torch.randint(0, clusters_per_class, (n_samples,), generator=g)
    x = centres[y * clusters_per_class + which]
    x = x + noise * torch.randn(n_samples, n_features, generator=g)
    dataset = TensorBatchDataset((x.float().contiguous(), y.long().contiguous()))
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle)


def synthetic_regression(
    batch_size: int = 32,
    n_samples: int = 2048,
    n_features: int = 16,
    n_targets: int = 1,
    noise: float = 0.1,
    seed: int = 0,
    shuffle: bool = True,
) -> DataLoader:
    """Regression against a fixed random nonlinear teacher: for MSE-loss checks.

    ``x ~ N(0, I)``; ``y = x @ A + 0.5 * sin(x @ B) + noise * N(0, I)`` where ``A`` and
    ``B`` are fixed random ``[F, n_targets]`` matrices scaled by ``1/sqrt(F)``, so targets
    have roughly unit scale. The irreducible MSE is ``noise ** 2``.

    Args:
        batch_size: samples per batch (>= 1).
        n_samples: size of the data set (>= 1).
        n_features: input dimension F (>= 1).
        n_targets: output dimension (>= 1).
        noise: standard deviation of the additive target noise (>= 0).
        seed: seeds the data (not the shuffling order, which follows the global RNG).
        shuffle: reshuffle every epoch.

    Returns:
        A DataLoader of tuples ``(x, y)``: ``x`` float32 ``[B, F]``,
        ``y`` float32 ``[B, n_targets]`` (2-D even when ``n_targets == 1``).
    """
    batch_size = _check_int("batch_size", batch_size)
    n_samples = _check_int("n_samples", n_samples)
    n_features = _check_int("n_features", n_features)
    n_targets = _check_int("n_targets", n_targets)
    noise = _check_float("noise", noise)
    seed = _check_seed(seed)
    shuffle = _check_bool("shuffle", shuffle)

    g = _generator(seed)
    scale = 1.0 / math.sqrt(n_features)
    a = torch.randn(n_features, n_targets, generator=g) * scale
    b = torch.randn(n_features, n_targets, generator=g) * (2.0 * scale)
    x = torch.randn(n_samples, n_features, generator=g)
    y = x @ a + 0.5 * torch.sin(x @ b) + noise * torch.randn(n_samples, n_targets, generator=g)
    dataset = TensorBatchDataset((x.float().contiguous(), y.float().contiguous()))
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle)


def token_sequences(
    batch_size: int = 16,
    seq_len: int = 32,
    vocab_size: int = 64,
    n_samples: int = 1024,
    seed: int = 0,
    shuffle: bool = True,
) -> DataLoader:
    """Token sequences from a fixed, sparse, random Markov chain: for tiny language models.

    Each token has only a few possible successors (at most 4, fewer for tiny vocabularies)
    with fixed random probabilities, so the next-token entropy is low (about 1 nat) and a
    small transformer's loss falls from about ``log(vocab_size)`` quickly. The first token
    of each sequence is uniform. ``seq_len + 1`` tokens are generated per sequence and split
    into inputs and next-token labels, so no ``-100`` padding is needed.

    Args:
        batch_size: sequences per batch (>= 1).
        seq_len: tokens per sequence T (>= 1).
        vocab_size: number of distinct tokens V (>= 2).
        n_samples: number of sequences (>= 1).
        seed: seeds the chain and the sequences (not the shuffling order).
        shuffle: reshuffle every epoch.

    Returns:
        A DataLoader of dicts ``{"input_ids": int64 [B, T], "labels": int64 [B, T]}`` with
        values in ``[0, V)`` and ``labels[:, t] == next token after input_ids[:, t]``
        (``labels[:, :-1] == input_ids[:, 1:]``), ready for ``model(**batch)``.
    """
    batch_size = _check_int("batch_size", batch_size)
    seq_len = _check_int("seq_len", seq_len)
    vocab_size = _check_int("vocab_size", vocab_size, minimum=2)
    n_samples = _check_int("n_samples", n_samples)
    seed = _check_seed(seed)
    shuffle = _check_bool("shuffle", shuffle)

    g = _generator(seed)
    k = min(4, vocab_size)
    # Sparse transition matrix: k successors per token, with skewed random weights.
    successors = torch.argsort(torch.rand(vocab_size, vocab_size, generator=g), dim=1)[:, :k]
    weights = torch.rand(vocab_size, k, generator=g) ** 2 + 0.05
    transition = torch.zeros(vocab_size, vocab_size)
    transition.scatter_(1, successors, weights)
    transition = transition / transition.sum(dim=1, keepdim=True)

    tokens = torch.empty(n_samples, seq_len + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (n_samples,), generator=g)
    for t in range(seq_len):
        probs = transition[tokens[:, t]]
        tokens[:, t + 1] = torch.multinomial(probs, 1, generator=g).squeeze(1)

    dataset = TensorBatchDataset(
        {
            "input_ids": tokens[:, :-1].contiguous(),
            "labels": tokens[:, 1:].contiguous(),
        }
    )
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle)
