"""Loading a layer file and finding its cases.

The convention (a contract): every class *defined in the file* that subclasses
``torch.autograd.Function`` or ``torch.nn.Module`` and has an ``example_inputs()``
staticmethod or classmethod is a case (a Function is called as ``Fn.apply(*inputs)``, a
Module is built with no arguments and called as ``module(*inputs)``); a class attribute
``gradoctor_case = {...}`` passes ``Case`` options (e.g. ``{"batch_mixing": True}``, or
``{"surrogate": F.hardtanh}`` for a straight-through estimator: the function whose derivative
the backward computes, differentiated numerically instead of the forward; called like the
case, a Module's with the module first). A module-level ``gradoctor_cases()`` may return more
:class:`~gradoctor.gradcheck.case.Case`.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from gradoctor.errors import UsageError
from gradoctor.gradcheck.case import Case
from gradoctor.recipe.components import ResolveError, import_file, user_frames


def _user_error(what: str, exc: BaseException, hint: str) -> UsageError:
    tb = user_frames(exc).rstrip()
    return UsageError(f"{what} raised {type(exc).__name__}: {exc}\n{tb}", hint=hint)


def load_layer_file(path: str | Path) -> ModuleType:
    """Import ``path`` as a fresh module (its folder goes on sys.path for sibling imports)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UsageError(f"no such file: '{path}'", hint="pass the Python file with your layer")
    try:
        return import_file(path, namespace="gradoctor_layer")
    except ResolveError as exc:
        message = exc.message + (f"\n{exc.user_traceback.rstrip()}" if exc.user_traceback else "")
        raise UsageError(message, hint="fix the error in your file") from exc


def _has_example_inputs(cls: type) -> bool:
    try:
        attr = inspect.getattr_static(cls, "example_inputs")
    except AttributeError:
        return False
    return isinstance(attr, staticmethod | classmethod)


def _as_tuple(value: Any, owner: str) -> tuple:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    raise UsageError(
        f"{owner}.example_inputs() returned a {type(value).__name__}",
        hint="return a tuple of positional arguments, e.g. (torch.randn(4, 8),)",
    )


def class_cases(module: ModuleType, seed: int = 0) -> list[Case]:
    """Cases from the classes defined in ``module`` (in definition order)."""
    cases = []
    for obj in list(vars(module).values()):
        if not inspect.isclass(obj) or obj.__module__ != module.__name__:
            continue
        is_fn = issubclass(obj, torch.autograd.Function)
        if not (is_fn or issubclass(obj, torch.nn.Module)) or not _has_example_inputs(obj):
            continue
        name = obj.__name__
        torch.manual_seed(seed)
        try:
            inputs = obj.example_inputs()
        except Exception as exc:
            raise _user_error(f"{name}.example_inputs()", exc, "fix example_inputs") from exc
        options = dict(getattr(obj, "gradoctor_case", {}) or {})
        fn: Any = obj
        if not is_fn:
            try:
                fn = obj()
            except Exception as exc:
                raise _user_error(
                    f"{name}()", exc, "a module case must be constructible with no arguments"
                ) from exc
        try:
            cases.append(Case(name, fn, _as_tuple(inputs, name), **options))
        except TypeError as exc:
            raise UsageError(f"{name}.gradoctor_case: {exc}") from exc
    return cases


def function_cases(module: ModuleType, seed: int = 0) -> list[Case]:
    """Cases returned by the file's ``gradoctor_cases()``, if it defines one."""
    factory = getattr(module, "gradoctor_cases", None)
    if factory is None:
        return []
    torch.manual_seed(seed)
    try:
        cases = list(factory())
    except Exception as exc:
        raise _user_error("gradoctor_cases()", exc, "fix gradoctor_cases") from exc
    for c in cases:
        if not isinstance(c, Case):
            raise UsageError(
                f"gradoctor_cases() returned a {type(c).__name__}",
                hint="return gradoctor.Case(name, fn, inputs, ...) objects",
            )
    return cases


def discover(path: str | Path, *, seed: int = 0, names: list[str] | None = None) -> list[Case]:
    """All cases of a layer file, optionally only those ``names``. Raises UsageError."""
    module = load_layer_file(path)
    cases = class_cases(module, seed) + function_cases(module, seed)
    if not cases:
        raise UsageError(
            f"no cases in '{Path(path).name}'",
            hint="give a Function or Module class an example_inputs() staticmethod returning a "
            "tuple of inputs, or define gradoctor_cases() returning gradoctor.Case objects",
        )
    seen: set[str] = set()
    for c in cases:
        if c.name in seen:
            raise UsageError(f"two cases are named '{c.name}'", hint="give each case its own name")
        seen.add(c.name)
    if names:
        known = [c.name for c in cases]
        for n in names:
            if n not in known:
                close = difflib.get_close_matches(n, known, n=1)
                raise UsageError(
                    f"no case named '{n}' (cases: {', '.join(known)})",
                    hint=f"did you mean '{close[0]}'?" if close else None,
                )
        cases = [c for c in cases if c.name in names]
    return cases
