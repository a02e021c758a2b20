"""The custom ``torch.autograd.Function`` classes in a case's autograd graph.

Shared by the checks' context (``CheckContext.function_classes``, found once per case) and by
the double-backward check, which skips a backward marked ``once_differentiable``.
"""

from __future__ import annotations

import torch

from gradoctor.gradcheck.target import FlatFunction


def graph_classes(target, fn: FlatFunction | None = None) -> list[type]:
    """Custom Function classes in the case's graph at ``fn``'s base point (one forward)."""
    fn = FlatFunction(target) if fn is None else fn
    with torch.enable_grad(), target.rng():
        vals = fn.values_at(fn.x0, requires_grad=True)
        return function_classes(target.call(vals))


def once_differentiable_classes(target, classes: list[type] | None = None) -> list[str]:
    """Names of custom Functions in the case's graph whose backward is once_differentiable
    (``classes``: the graph's, when already found)."""
    found = []
    for cls in graph_classes(target) if classes is None else classes:
        code = getattr(cls.backward, "__code__", None)
        if code is not None and code.co_filename.endswith(("autograd/function.py",)):
            if getattr(cls.backward, "__wrapped__", None) is not None:
                found.append(cls.__name__)
    return found


def function_classes(outs) -> list[type]:
    """Custom autograd.Function classes reachable from ``outs``' autograd graph."""
    seen, stack, classes = set(), [o.grad_fn for o in outs if o.grad_fn is not None], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and cls not in classes:
            classes.append(cls)
        stack += [nxt for nxt, _ in getattr(node, "next_functions", ())]
    return classes
