"""The layer contract in pyproject.toml (``[tool.importlinter]``), checked the way CI would.

Each contract runs through import-linter itself (the same code as ``lint-imports``) in a
subprocess from the repository root, so a failure shows import-linter's own report: which
layer imports which, by which chain of imports, at which line.
"""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from tests.conftest import ROOT_DIR

# The `lint-imports` command itself, run by this interpreter (its script may not be on PATH).
LINT_IMPORTS = "from importlinter.cli import lint_imports_command as c; c(prog_name='lint-imports')"


@pytest.mark.parametrize(
    "contract",
    [
        "layers",  # each layer imports only from the layers below it
        "acyclic",  # no import cycle between the modules (or subpackages) of any package
    ],
)
def test_import_contract_is_kept(contract: str):
    proc = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--config=pyproject.toml", "--no-cache"]
        + [f"--contract={contract}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT_DIR,
    )
    assert proc.returncode == 0, f"lint-imports --contract {contract}:\n{proc.stdout}{proc.stderr}"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _chain(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One cycle through the component, with line numbers: ``a (l.3) -> b (l.9) -> a``."""
    first, members = component[0], set(component)
    back = next(m for m in sorted(graph.find_modules_that_directly_import(first)) if m in members)
    path = graph.find_shortest_chain(importer=first, imported=back) or (first, back)
    steps = [*path, first]
    parts = []
    for importer, imported in zip(steps, steps[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        lines = ",".join(str(d["line_number"]) for d in details)
        parts.append(f"{importer} (l.{lines})")
    return " -> ".join([*parts, first])


def test_no_import_cycle_between_any_modules():
    """Stricter than the ``acyclic`` contract, which compares siblings only: this also finds a
    cycle through a package's own ``__init__`` (a module importing its parent package)."""
    graph = grimp.build_graph("gradoctor", cache_dir=None)
    cycles = _cycles(graph)
    report = [f"{', '.join(c)}\n  e.g. {_chain(graph, c)}" for c in cycles]
    assert not cycles, "modules that import each other, in a cycle:\n" + "\n".join(report)
