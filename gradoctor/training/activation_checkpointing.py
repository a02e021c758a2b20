"""Activation checkpointing by module class name or qualified name (non-reentrant)."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from gradoctor.errors import RecipeError, RecipeProblem


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict)


def checkpoint_targets(model: torch.nn.Module, names: list[str]) -> tuple[list[str], list[str]]:
    """``(qualified names to wrap, names that match nothing)`` for ``names`` (class or
    qualified names). A module nested inside one already wrapped is left out (its activations
    are not saved anyway). A ``ModuleList`` / ``ModuleDict`` is never called, so naming one
    means each of its entries. The memory profiler predicts from the same list."""
    wanted = set(names)
    matched: set[str] = set()
    wrapped: list[str] = []
    for qname, module in model.named_modules():
        hit = {qname, type(module).__name__} & wanted
        if not hit:
            continue
        matched |= hit
        if any(qname.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, _CONTAINERS):
            wanted |= {
                f"{qname}.{child}" if qname else child for child, _ in module.named_children()
            }
            continue
        wrapped.append(qname)
    return wrapped, [n for n in names if n not in matched]


def apply_checkpointing(model: torch.nn.Module, names: list[str]) -> Callable[[], None]:
    """Wrap the forward of every module :func:`checkpoint_targets` names (non-reentrant
    ``torch.utils.checkpoint``). Returns a function that removes every wrapper. Raises
    RecipeError for a name that matches nothing, with a "did you mean".
    """
    modules = dict(model.named_modules())
    wrapped, missing = checkpoint_targets(model, names)
    if missing:
        candidates = sorted(
            {type(m).__name__ for m in modules.values()} | {q for q in modules if q}
        )
        problems = []
        for n in missing:
            close = difflib.get_close_matches(n, candidates, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            problems.append(
                RecipeProblem(
                    f"train.checkpoint[{names.index(n)}]",
                    f"no module of class or name '{n}' in the model",
                    hint=hint
                    + "module classes: "
                    + ", ".join(sorted({type(m).__name__ for m in modules.values()})),
                )
            )
        raise RecipeError(problems)
    for qname in wrapped:
        modules[qname].forward = functools.partial(_checkpointed, modules[qname].forward)
    return functools.partial(_restore, modules, wrapped)


def _restore(modules: dict[str, torch.nn.Module], wrapped: list[str]) -> None:
    for qname in wrapped:
        modules[qname].__dict__.pop("forward", None)
