"""Resolve and call ``_component_`` targets.

A target is either ``"file.py:Symbol"`` (a path relative to the recipe's folder, or absolute)
or a dotted import path ``"package.module.Symbol"``. Errors raised while importing or calling
the user's code are re-raised as :class:`~gradoctor.errors.UserCodeError` carrying only the
frames from the user's files, so the root cause is not buried under gradoctor's internals.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradoctor.errors import UserCodeError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_TORCH_DIR = Path(__import__("torch").__file__).resolve().parent
_IMPORTLIB_DIR = Path(importlib.__file__).resolve().parent


def _inside(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


_FILE_MODULES: dict[Path, Any] = {}


class ResolveError(Exception):
    """A target that cannot be resolved; ``hint`` suggests the fix, ``user_traceback`` the cause."""

    def __init__(self, message: str, hint: str | None = None, user_traceback: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.user_traceback = user_traceback


def user_frames(exc: BaseException) -> str:
    """Format ``exc``'s traceback keeping only frames outside gradoctor, importlib and torch."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen")
        and not _inside(f.filename, _PACKAGE_DIR)
        and not _inside(f.filename, _IMPORTLIB_DIR)
    ]
    # torch's own frames (Module.__call__ and friends) only when nothing else is left.
    frames = [f for f in frames if not _inside(f.filename, _TORCH_DIR)] or frames
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _close(name: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def import_file(path: Path, *, namespace: str = "gradoctor_user") -> Any:
    """Import a Python file as a fresh module named ``namespace.<stem>_<hash>``.

    The file's folder goes on ``sys.path`` so it can import its siblings. Raises
    :class:`ResolveError` (with the user's own traceback when their code raised)."""
    path = path.resolve()
    if not path.is_file():
        raise ResolveError(f"file '{path}' does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"{namespace}.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ResolveError(f"cannot import '{path}' as a Python file")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module raised while importing
        sys.modules.pop(name, None)
        raise ResolveError(
            f"importing '{path.name}' raised {type(exc).__name__}: {exc}",
            hint="fix the error in your file (see its traceback)",
            user_traceback=user_frames(exc),
        ) from exc
    return module


def _load_file_module(path: Path) -> Any:
    """A recipe's ``file.py``, imported once per process (model and data share its classes)."""
    path = path.resolve()
    if path not in _FILE_MODULES:
        if not path.is_file():
            raise ResolveError(
                f"file '{path}' does not exist",
                hint="file paths in _component_ are relative to the recipe's folder",
            )
        _FILE_MODULES[path] = import_file(path)
    return _FILE_MODULES[path]


def _import_module(name: str) -> Any | None:
    """Import ``name``; None when no such module exists. Errors inside the module propagate."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise ResolveError(
            f"importing '{name}' raised {type(exc).__name__}: {exc}",
            hint="a module your code imports is missing; install it",
            user_traceback=user_frames(exc),
        ) from exc
    except Exception as exc:
        raise ResolveError(
            f"importing '{name}' raised {type(exc).__name__}: {exc}",
            user_traceback=user_frames(exc),
        ) from exc


def _import_dotted(target: str) -> Any:
    """Walk ``a.b.c``: attributes first, submodules when no attribute has the name (so a
    package attribute wins over a submodule of the same name, e.g. ``gradoctor.data.digits``)."""
    parts = target.split(".")
    obj = _import_module(parts[0])
    if obj is None:
        raise ResolveError(
            f"cannot import '{target}': no module named '{parts[0]}'",
            hint="use 'file.py:Symbol' for a file next to the recipe, or a dotted path of an installed module",
        )
    for i, attr in enumerate(parts[1:], start=1):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            continue
        sub = _import_module(".".join(parts[: i + 1])) if inspect.ismodule(obj) else None
        if sub is None:
            owner = ".".join(parts[:i])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ResolveError(f"'{owner}' has no attribute '{attr}'", hint=_close(attr, names))
        obj = sub
    return obj


def resolve_target(target: str, base_dir: Path) -> Callable[..., Any]:
    """Return the object that ``target`` names. Raises :class:`ResolveError`."""
    if not isinstance(target, str) or not target.strip():
        raise ResolveError("_component_ must be a non-empty string like 'models.py:MLP'")
    if ":" in target:
        file_part, _, symbol = target.rpartition(":")
        if not file_part.endswith(".py"):
            raise ResolveError(
                f"'{target}' is neither 'file.py:Symbol' nor a dotted path",
                hint="write 'models.py:MLP' or 'torch.nn.CrossEntropyLoss'",
            )
        path = Path(file_part)
        module = _load_file_module(path if path.is_absolute() else base_dir / path)
        obj: Any = module
        for attr in symbol.split("."):
            if not hasattr(obj, attr):
                names = [n for n in dir(module) if not n.startswith("_")]
                raise ResolveError(f"'{file_part}' defines no '{attr}'", hint=_close(attr, names))
            obj = getattr(obj, attr)
    else:
        obj = _import_dotted(target)
    if not callable(obj):
        raise ResolveError(f"'{target}' is a {type(obj).__name__}, not a class or function")
    return obj


def check_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], n_positional: int
) -> list[tuple[str, str, str | None]]:
    """Check that ``fn(<n_positional args>, **kwargs)`` binds.

    Returns ``(key, message, hint)`` for each problem; empty when it binds or the signature
    cannot be read (builtins) or takes ``**kwargs``.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    names = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    problems = []
    for key in kwargs:
        if key not in params or params[key].kind is inspect.Parameter.POSITIONAL_ONLY:
            accepted = ", ".join(names[n_positional:]) or "none"
            problems.append(
                (key, f"unknown argument '{key}' (accepted: {accepted})", _close(key, names))
            )
    if problems:
        return problems
    try:
        sig.bind_partial(*([None] * n_positional), **kwargs)
    except TypeError as exc:
        problems.append(("", str(exc), None))
        return problems
    missing = [
        n
        for i, (n, p) in enumerate(params.items())
        if i >= n_positional
        and p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in kwargs
    ]
    for n in missing:
        problems.append(("", f"required argument '{n}' is missing", f"add '{n}: ...' here"))
    return problems


def call_user(fn: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
    """Call user code; any exception becomes a UserCodeError naming ``what`` with the user's frames."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise UserCodeError(
            f"{what} raised {type(exc).__name__}: {exc}", user_traceback=user_frames(exc)
        ) from exc
