"""Per-layer blocks against the dense Hessian's diagonal sub-blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradoctor.hessian import hessian_spectrum
from gradoctor.hessian.functional import ParamLayout
from gradoctor.hessian.per_layer import block_indices


def test_blocks_are_each_modules_own_parameters(cnn_problem):
    blocks = block_indices(ParamLayout.of(cnn_problem.model, None))
    assert list(blocks) == ["conv1", "bn1", "conv2", "bn2", "head"]
    assert [len(i) for i in blocks.values()] == [80, 16, 584, 16, 27]
    assert np.array_equal(np.concatenate(list(blocks.values())), np.arange(723))


def test_block_eigenvalues_and_traces_match_the_dense_sub_blocks(cnn_problem, cnn_hessian):
    """trace_hvps=30: conv1 (80) and conv2 (584) go through eigsh + Hutch++, the small blocks
    are built densely (exact)."""
    p = cnn_problem
    result = hessian_spectrum(p.model, p.loss_fn, p.batches, per_layer=True, trace_hvps=30)
    blocks = block_indices(ParamLayout.of(p.model, None))
    for name, layer in result.per_layer.items():
        idx = torch.as_tensor(blocks[name])
        sub = cnn_hessian[idx][:, idx]
        top = torch.linalg.eigvalsh(sub)[-1].item()
        assert layer.params == len(idx)
        assert layer.eigenvalue == pytest.approx(top, rel=1e-4), name
        exact = layer.params <= 30
        tolerance = 1e-9 if exact else 4 * layer.trace_stderr + 1e-12
        assert abs(layer.trace - sub.trace().item()) <= tolerance, name
        assert (layer.trace_stderr == 0) == exact
    d = result.to_dict()["per_layer"]
    assert set(d) == set(blocks) and set(d["conv2"]) == {"eigenvalue", "trace", "params"}


def test_a_model_owning_parameters_itself_is_the_root_block():
    model = torch.nn.Linear(3, 2).double()
    batches = [(torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1]))]
    result = hessian_spectrum(
        model,
        lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
        batches,
        per_layer=True,
        trace_hvps=8,
    )
    assert list(result.per_layer) == ["<root>"] and result.per_layer["<root>"].params == 8
    assert result.per_layer["<root>"].eigenvalue == pytest.approx(result.eigenvalues[0], rel=1e-9)
