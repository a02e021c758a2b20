"""Cases from PyTorch's OpInfo database, a real corpus of correct gradients.

``torch.testing._internal.common_methods_invocations.op_db`` lists ~550 differentiable ops
with ``sample_inputs``; each sample becomes a Case over its tensor arguments (lists of
tensors are flattened, so each tensor is a differentiable input). Ops have no batch
semantics, so cases are ``batched=False``. Used by the false-positive test and by
``bench/opdb_sweep.py``. Importing this module imports torch's internal test utilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree

from gradoctor.gradcheck.case import Case


def differentiable_ops() -> list[Any]:
    """OpInfos that support autograd and float64 on CPU."""
    from torch.testing._internal.common_methods_invocations import op_db

    return [
        op for op in op_db if op.supports_autograd and torch.float64 in op.supported_dtypes("cpu")
    ]


def skip_reason(op: Any) -> str | None:
    """Why an op is not a fair gradient case (None: it is)."""
    name = op.name
    if "rand" in name or "normal" in name or "bernoulli" in name or "dropout" in name:
        return "random op without a fixed draw"
    return None


def cases_for(op: Any, max_samples: int = 2) -> Iterator[Case]:
    """Up to ``max_samples`` float64 CPU samples of ``op`` as Cases."""
    samples = op.sample_inputs("cpu", torch.float64, requires_grad=True)
    k = 0
    for sample in samples:
        if k >= max_samples:
            break
        structure = (sample.input, tuple(sample.args))
        leaves, spec = pytree.tree_flatten(structure)
        # The sample marks the differentiable tensors (requires_grad); others stay constant.
        diff_pos = [
            i
            for i, leaf in enumerate(leaves)
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad
        ]
        if not any(leaves[i].numel() for i in diff_pos):
            continue  # empty sample: nothing to differentiate
        leaves = [leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        kwargs = dict(sample.kwargs)

        def call(*tensors, _leaves=leaves, _pos=diff_pos, _spec=spec, _kw=kwargs, _s=sample):
            filled = list(_leaves)
            for i, t in zip(_pos, tensors):
                filled[i] = t
            inp, args = pytree.tree_unflatten(filled, _spec)
            return _s.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), inp, *args, **_kw))

        yield Case(
            f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}[{k}]",
            call,
            tuple(leaves[i] for i in diff_pos),
            batched=False,
            double_backward=None if op.supports_gradgrad else False,
        )
        k += 1
