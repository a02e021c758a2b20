"""Built-in data components that a recipe names by dotted path.

A recipe's ``data:`` section names one of these functions; its sibling keys are keyword
arguments::

    data:
      _component_: gradoctor.data.synthetic_classification
      batch_size: 32
      n_features: 20

Each returns a :class:`torch.utils.data.DataLoader` (``num_workers=0``,
``drop_last=False``) that can be iterated again every epoch. Data are generated from a
private generator seeded with ``seed``; shuffling follows the global torch RNG, which
gradoctor seeds and checkpoints, so a resumed run sees the same batches.

==============================  =================================================================
component                       batch
==============================  =================================================================
``synthetic_classification``    ``(x float32 [B, F], y int64 [B])``
``synthetic_regression``        ``(x float32 [B, F], y float32 [B, n_targets])``
``token_sequences``             ``{"input_ids": int64 [B, T], "labels": int64 [B, T]}``
``digits``                      ``(x float32 [B, 1, 8, 8] or [B, 64], y int64 [B])``
==============================  =================================================================

The modules are named for what they hold (``synthetic``, ``digits_data``), never for a
function they export, so every dotted name resolves to one thing.
"""

from __future__ import annotations

from .digits_data import digits
from .synthetic import synthetic_classification, synthetic_regression, token_sequences

__all__ = [
    "digits",
    "synthetic_classification",
    "synthetic_regression",
    "token_sequences",
]
