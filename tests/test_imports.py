"""Every module imports, by its dotted name, and the command line's help needs no torch."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import gradoctor
from tests.conftest import ROOT_DIR


def _module_names() -> list[str]:
    """Every module and package under gradoctor, found by ``pkgutil.walk_packages``.

    ``__main__`` modules are left out: importing one runs the CLI. A package whose import fails
    while walking stays in the list (its test then shows the error) instead of being skipped.
    """
    broken: list[str] = []
    names = [
        info.name
        for info in pkgutil.walk_packages(gradoctor.__path__, "gradoctor.", onerror=broken.append)
    ]
    return sorted({*names, *broken} - {n for n in names if n.rsplit(".", 1)[-1] == "__main__"})


MODULES = _module_names()


def test_the_walk_finds_the_package():
    """The list is the package's, not empty by accident (subpackages included)."""
    assert {"gradoctor.cli", "gradoctor.errors", "gradoctor.gradcheck.checks.common"} <= set(
        MODULES
    )
    assert "gradoctor.__main__" not in MODULES and len(MODULES) > 60


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_by_its_dotted_name(name: str):
    """``import gradoctor.a.b as m`` gives the module: no package attribute of the same name (a
    function re-exported in ``__init__``, say) shadows it."""
    module = importlib.import_module(name)
    assert module.__name__ == name
    parent, _, leaf = name.rpartition(".")
    bound = getattr(importlib.import_module(parent), leaf)
    assert bound is module, f"{parent}.{leaf} is {bound!r}, not the module {name}"


def test_every_public_name_resolves():
    """The root package loads its torch-backed names on first use: every name in ``__all__``
    resolves, to the object of its home module, and ``dir()`` lists it."""
    for name in gradoctor.__all__:
        assert getattr(gradoctor, name) is not None, name
    assert set(gradoctor.__all__) <= set(dir(gradoctor))
    assert gradoctor.train is importlib.import_module("gradoctor.api").train
    assert gradoctor.check_grads is importlib.import_module("gradoctor.gradcheck").check_grads
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        gradoctor.trian  # noqa: B018


# `gradoctor <args>` through the console-script's function, in a fresh interpreter; prints the
# torch modules imported by then.
HELP_RUN = """
import sys
sys.argv = ["gradoctor", *sys.argv[1:]]
import gradoctor.cli
try:
    gradoctor.cli.main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.parametrize("command", [[], ["train"], ["memory-profile"], ["check-grads"]])
def test_help_does_not_import_torch(command: list[str]):
    """``--help`` answers at once: torch (seconds to import) loads only when a command runs."""
    proc = subprocess.run(
        [sys.executable, "-c", HELP_RUN, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT_DIR,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_version_prints_the_package_version_without_torch():
    from gradoctor.version import __version__

    proc = subprocess.run(
        [sys.executable, "-c", HELP_RUN, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT_DIR,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"gradoctor {__version__}" and lines[-1] == "[]"


def test_no_public_function_shares_its_name_with_a_subpackage():
    """``import gradoctor.x`` binds ``gradoctor.x`` to the subpackage: a lazy public name
    ``x`` would then be shadowed (``gradoctor.curvature`` is a function; its package is
    ``gradoctor.hessian``)."""
    import pkgutil

    import gradoctor

    packages = {m.name for m in pkgutil.iter_modules(gradoctor.__path__)}
    assert not packages & set(gradoctor._LAZY), packages & set(gradoctor._LAZY)
    import gradoctor.hessian.recipe_curvature  # noqa: F401

    assert callable(gradoctor.curvature)
