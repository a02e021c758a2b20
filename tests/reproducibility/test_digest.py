"""The tensor digest: equal bits give equal digests, any changed bit a different one."""

from __future__ import annotations

import pytest
import torch

from gradoctor.reproducibility.digest import tensor_digest


def _d(t: torch.Tensor) -> int:
    return int(tensor_digest(t))


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32]
)
def test_every_single_element_change_changes_the_digest(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 11, generator=g) * 100).to(dtype)
    base = _d(x)
    assert _d(x.clone()) == base
    bits = x.view(torch.int16 if x.element_size() == 2 else x.dtype)
    for i in range(x.numel()):  # the smallest change at every position: one ulp / one unit
        y = bits.clone().reshape(-1)
        y[i] += 1
        assert _d(y.view(x.shape).view(x.dtype)) != base, i


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_negated_elements_never_cancel(dtype: torch.dtype) -> None:
    # a flipped sign bit is the change most likely to cancel in a weighted integer sum
    x = torch.randn(64, generator=torch.Generator().manual_seed(1)).to(dtype)
    for i in range(64):
        for j in range(i + 1, 64):
            y = x.clone()
            y[[i, j]] = -y[[i, j]]
            assert _d(y) != _d(x), (i, j)
    assert _d(-x) != _d(x)


def test_order_layout_and_type_semantics() -> None:
    x = torch.randn(8, 16)
    assert _d(x.t().contiguous().t()) == _d(x)  # the same values in another memory layout
    assert _d(x.flip(0)) != _d(x)  # a permutation
    assert _d(torch.tensor([0.0])) != _d(torch.tensor([-0.0]))  # bits, not values
    nan_a = torch.tensor([float("nan")])
    assert _d(nan_a) == _d(nan_a.clone())
    assert _d(torch.zeros(0)) == 0
    assert _d(torch.tensor([True, False])) != _d(torch.tensor([False, True]))
    z = torch.randn(4, dtype=torch.complex64)
    assert _d(z) == _d(z.clone()) and _d(z) != _d(z.conj().resolve_conj())


def test_digest_does_not_depend_on_the_thread_count() -> None:
    x = torch.randn(1 << 18)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _d(x)
        torch.set_num_threads(max(2, threads))
        assert _d(x) == one
    finally:
        torch.set_num_threads(threads)


def test_digest_draws_nothing_from_the_global_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradoctor.reproducibility import digest

    monkeypatch.setattr(digest, "_weights", {})  # the weights are made (drawn) again
    monkeypatch.setattr(digest, "_slices", {})
    x = torch.ones(1 << 12)
    torch.manual_seed(3)
    tensor_digest(x)
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), after)
