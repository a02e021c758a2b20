"""Prove that a refactor changed no numbers: train every shipped recipe under two trees, compare.

    python bench/report_equality.py                       # base /tmp/base (else HEAD) vs this tree
    python bench/report_equality.py --base 602e1e1        # a git rev: temporary `git worktree`
    python bench/report_equality.py --recipes 'zoo/*' --steps 20
    python bench/report_equality.py --base /tmp/base --current /tmp/base --no-exclude  # noise

For each recipe in ``recipes/*.yaml`` and ``recipes/zoo/*.yaml`` it runs ``gradoctor.train``
once under the base tree and once under the current tree, each in its own subprocess started
in that tree's root with ``PYTHONPATH=<tree root>`` first (so relative ``_component_`` paths
and ``import gradoctor`` resolve to that tree; the worker records ``gradoctor.__file__`` and
the run fails if it lies outside the tree), ``train.device=cpu``, one torch thread and
``output.dir`` in a temporary folder. A run that raises a GradoctorError (the zoo stops on NaN)
still writes its report; the exception's class is compared too. Then, per recipe:

- ``report.json``: every leaf, key by key (missing and extra keys count as differences);
- TensorBoard events: every scalar (tag, step) and every histogram and text summary (not the
  events' wall_time);
- ``checkpoint.pt`` (``torch.load``): every tensor bitwise (dtype, shape, bytes) and every
  other leaf (model, optimizer, scaler, scheduler, RNG, data position, history).

Floats compare bitwise (CPU runs are deterministic). In strings the run's output folder and
the tree root are replaced by ``<out>`` and ``<tree>`` first, so paths still compare by shape.
Only the keys in ``REPORT_NOISE``, ``TB_NOISE`` and ``CHECKPOINT_NOISE`` are skipped: exactly
what differed between two runs of the same code (``--no-exclude`` lists those again).

Exit 0 when every recipe is equal, 1 otherwise (a run that fails to start counts as a DIFF).

Cost: 2 trainings per recipe, ``--jobs 2`` at a time, one thread each. The 10 shipped recipes
at their own steps take ~5 CPU-minutes (half of it cnn.yaml: bf16 autocast on CPU): 150 s
measured on 2 quiet cores, 8.5 min on 2 cores shared with other work. ``--steps 20`` takes
~2.3 CPU-minutes, mostly process start-up (so ~70 s quiet; 4.7 min measured shared).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = Path("/tmp/base")
RECIPE_GLOBS = ("recipes/*.yaml", "recipes/zoo/*.yaml")
WORKER_FILE = "worker.json"

# Run-dependent keys: exactly those that differed between two runs of the same tree
# (`--base /tmp/base --current /tmp/base --no-exclude`). Patterns on the dotted key path, list
# indices written [*], `*` matching anything; a match skips the whole subtree.
REPORT_NOISE: dict[str, str] = {
    "duration_s": "wall-clock time of the whole run",
    "throughput.step_s": "mean wall-clock time per step",
    "throughput.samples_per_s": "samples per wall-clock second",
    "history.step_time_s": "wall-clock step time per log interval",
    "history.samples_per_s": "samples per wall-clock second per log interval",
    "memory.rss_peak": "host process RSS peak: allocator and import state of the process",
    "nonfinite[*].replay.replay_s": "wall-clock time of the non-finite step's replay",
    "diagnoses[*].evidence.replay_s": "the same replay time, quoted as a diagnosis' evidence",
}
TB_NOISE: dict[str, str] = {
    "time/step_s": "wall-clock step time per log interval",
    "throughput/samples_per_s": "samples per wall-clock second per log interval",
    "memory/rss_peak": "host process RSS peak",
}
CHECKPOINT_NOISE: dict[str, str] = {
    "history.step_time_s": "wall-clock step time per log interval (the report's history)",
    "history.samples_per_s": "samples per wall-clock second per log interval",
}


# ---- trees and runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One training of one recipe under one tree."""

    label: str  # "base" | "current"
    tree: Path
    recipe: str  # relative to the tree root
    out: Path  # holds worker.json and run/


@dataclass
class Outcome:
    """What one run left behind (``error`` set when no comparable output exists)."""

    run: Run
    raised: str | None = None
    error: str | None = None
    imported: Path | None = None  # gradoctor.__file__ in the worker


def tree_root(path: Path) -> Path:
    root = path.resolve()
    if not (root / "gradoctor" / "__init__.py").is_file():
        raise SystemExit(f"{path}: not a gradoctor tree (no gradoctor/__init__.py)")
    return root


@contextlib.contextmanager
def base_tree(spec: str | None, current: Path, scratch: Path) -> Iterator[Path]:
    """``spec`` is a folder, or a git rev checked out as a temporary worktree of ``current``."""
    if spec is None:
        spec = str(DEFAULT_BASE) if DEFAULT_BASE.is_dir() else "HEAD"
    if Path(spec).is_dir():
        yield tree_root(Path(spec))
        return
    where = scratch / "base-worktree"
    git = ["git", "-C", str(current), "worktree"]
    added = subprocess.run(
        [*git, "add", "--detach", str(where), spec], capture_output=True, text=True
    )
    if added.returncode != 0:
        raise SystemExit(f"--base {spec}: git worktree add failed: {added.stderr.strip()}")
    try:
        yield tree_root(where)
    finally:
        subprocess.run([*git, "remove", "--force", str(where)], check=False, capture_output=True)


def find_recipes(tree: Path, patterns: list[str] | None) -> list[str]:
    """Shipped recipes relative to ``tree``; ``patterns`` match the path or the part after
    ``recipes/`` (``mlp.yaml``, ``zoo/*``)."""
    found = sorted(str(p.relative_to(tree)) for g in RECIPE_GLOBS for p in tree.glob(g))
    if not patterns:
        return found
    return [r for r in found if any(_recipe_matches(r, p) for p in patterns)]


def _recipe_matches(recipe: str, pattern: str) -> bool:
    short = recipe.removeprefix("recipes/")
    names = (recipe, short, short.removesuffix(".yaml"))
    return any(fnmatch.fnmatch(n, pattern) for n in names)


def worker_command(run: Run, steps: int | None, threads: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", run.recipe, str(run.out)]
    cmd += ["--threads", str(threads)] + (["--steps", str(steps)] if steps else [])
    return cmd


def launch(run: Run, steps: int | None, threads: int, timeout: float) -> Outcome:
    """Train ``run`` in a subprocess rooted at its tree; read back the worker's record."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(run.tree), env.get("PYTHONPATH")]))
    run.out.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            worker_command(run, steps, threads),
            cwd=run.tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Outcome(run, error=f"{run.label}: timed out after {timeout:.0f}s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(run, error=f"{run.label}: worker exit {proc.returncode}: {tail}")
    record = json.loads((run.out / WORKER_FILE).read_text())
    imported = Path(record["gradoctor_file"]).resolve()
    if not imported.is_relative_to(run.tree):
        return Outcome(run, error=f"{run.label}: imported {imported}, not from {run.tree}")
    return Outcome(run, raised=record["raised"], imported=imported)


def worker(recipe: str, out: Path, steps: int | None, threads: int) -> int:
    """Subprocess side: train one recipe, record what was imported and raised."""
    import torch

    torch.set_num_threads(threads)
    import gradoctor

    train: dict[str, Any] = {"device": "cpu"} | ({"steps": steps} if steps else {})
    raised = None
    try:
        gradoctor.train(recipe, train=train, output={"dir": str(out / "run")})
    except gradoctor.GradoctorError as exc:
        raised = type(exc).__name__
        if getattr(exc, "result", None) is None:  # failed before training began
            raise
    record = {"gradoctor_file": gradoctor.__file__, "raised": raised}
    (out / WORKER_FILE).write_text(json.dumps(record))
    print(f"gradoctor imported from {gradoctor.__file__}")
    return 0


# ---- flattening -------------------------------------------------------------------------
Leaves = dict[str, Any]


def _skipped(path: str, noise: dict[str, str]) -> bool:
    folded = _fold(path)
    return any(_pattern(p).fullmatch(folded) for p in noise)


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\*", ".*"))


def _fold(key: str) -> str:
    """List indices -> ``[*]``; TensorBoard ``tag@step`` -> ``tag``."""
    return re.sub(r"\[\d+\]", "[*]", re.sub(r"@\d+'*$", "", key))


def flatten(node: Any, noise: dict[str, str], fix: Callable[[str], str], path: str = "") -> Leaves:
    """``{"a.b[2].c": leaf}``; subtrees whose dotted key path matches ``noise`` are left out."""
    out: Leaves = {}
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if not _skipped(sub, noise):
                out |= flatten(value, noise, fix, sub)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            out |= flatten(value, noise, fix, f"{path}[{i}]")
    else:
        out[path] = fix(node) if isinstance(node, str) else node
    return out


def path_fixer(run: Run) -> Callable[[str], str]:
    """Strings with the run's output folder or tree root in them -> ``<out>`` / ``<tree>``."""
    swaps = [(str(run.out / "run"), "<out>"), (str(run.tree), "<tree>")]

    def fix(text: str) -> str:
        for old, new in swaps:
            text = text.replace(old, new)
        return text

    return fix


def report_leaves(run: Run, noise: dict[str, str]) -> Leaves:
    data = json.loads((run.out / "run" / "report.json").read_text())
    return flatten(data, noise, path_fixer(run))


def tb_leaves(run: Run, noise: dict[str, str]) -> Leaves:
    """``{"<tag>@<step>": value}`` of every summary value in the run's event files."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    fix, out = path_fixer(run), {}
    for file in sorted((run.out / "run").glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if not _skipped(value.tag, noise):
                    key = f"{value.tag}@{event.step}"
                    while key in out:  # the same tag twice at one step
                        key += "'"
                    out[key] = _summary_value(value, fix)
    return out


def _summary_value(value: Any, fix: Callable[[str], str]) -> Any:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "histo":
        h = value.histo
        limits, counts = tuple(h.bucket_limit), tuple(h.bucket)
        return ("histo", h.min, h.max, h.num, h.sum, h.sum_squares, limits, counts)
    if kind == "tensor":
        return ("tensor", tuple(fix(s.decode(errors="replace")) for s in value.tensor.string_val))
    return (kind, value.SerializeToString())


def checkpoint_leaves(run: Run, noise: dict[str, str]) -> Leaves | None:
    import torch

    file = run.out / "run" / "checkpoint.pt"
    if not file.is_file():
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    return flatten(state, noise, path_fixer(run))


# ---- comparing --------------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Exact equality: floats and tensors bitwise, containers element-wise, types must match."""
    import torch

    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _bits(t: Any) -> Any:
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat


def first_difference(a: Leaves, b: Leaves) -> str | None:
    """``"path: base_value != current_value"`` for the first differing leaf, else None."""
    for key, value in a.items():
        if key not in b:
            return f"{key}: only in base ({show(value)})"
        if not same(value, b[key]):
            return key + describe(value, b[key])
    extra = next((k for k in b if k not in a), None)
    return f"{extra}: only in current ({show(b[extra])})" if extra is not None else None


def describe(a: Any, b: Any) -> str:
    """``": a != b"``; for same-shaped tensors the first element whose bits differ."""
    import torch

    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return f": {show(a)} != {show(b)}"
    if a.dtype != b.dtype or a.shape != b.shape:
        return f": {show(a)} != {show(b)}"
    width = a.element_size()
    rows = (_bits(a).view(-1, width) != _bits(b).view(-1, width)).any(dim=1)
    i = int(rows.nonzero()[0, 0])
    va, vb = a.reshape(-1)[i].item(), b.reshape(-1)[i].item()
    return f"[flat {i}] of {show(a)}: {show(va)} != {show(vb)}"


def all_differences(a: Leaves, b: Leaves) -> list[str]:
    keys = list(a) + [k for k in b if k not in a]
    return [k for k in keys if k not in a or k not in b or not same(a[k], b[k])]


def show(value: Any, width: int = 48) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"tensor({str(value.dtype).removeprefix('torch.')}, {list(value.shape)})"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def count_tensors(leaves: Leaves | None) -> int:
    import torch

    return sum(isinstance(v, torch.Tensor) for v in (leaves or {}).values())


def count_scalars(leaves: Leaves) -> int:
    return sum(isinstance(v, float) for v in leaves.values())


@dataclass
class Comparison:
    """One recipe's verdict and how much was compared."""

    recipe: str
    report_keys: int = 0
    tb_scalars: int = 0
    tb_other: int = 0
    tensors: int = 0
    diff: str | None = None
    noisy: dict[str, list[str]] = field(default_factory=dict)  # --no-exclude: every diff


def compare(recipe: str, base: Outcome, current: Outcome, exclude: bool) -> Comparison:
    result = Comparison(recipe)
    errors = [o.error for o in (base, current) if o.error]
    if errors:
        result.diff = "ERROR " + "; ".join(errors)
        return result
    if base.raised != current.raised:
        result.diff = f"raised: {base.raised} != {current.raised}"
    parts = {
        "report": (report_leaves, REPORT_NOISE),
        "tb": (tb_leaves, TB_NOISE),
        "checkpoint": (checkpoint_leaves, CHECKPOINT_NOISE),
    }
    for name, (read, noise) in parts.items():
        skip = noise if exclude else {}
        a, b = read(base.run, skip), read(current.run, skip)
        _count(result, name, a)
        _record(result, name, a, b, exclude)
    return result


def _count(result: Comparison, name: str, a: Leaves | None) -> None:
    """What was compared, counted on the base side."""
    a = a or {}
    if name == "report":
        result.report_keys = len(a)
    elif name == "tb":
        result.tb_scalars = count_scalars(a)
        result.tb_other = len(a) - result.tb_scalars
    else:
        result.tensors = count_tensors(a)


def _record(
    result: Comparison, name: str, a: Leaves | None, b: Leaves | None, exclude: bool
) -> None:
    if (a is None) != (b is None):
        where = "base" if b is None else "current"
        result.diff = result.diff or f"checkpoint.pt only in {where}"
        return
    a, b = a or {}, b or {}
    if not exclude:
        result.noisy[name] = all_differences(a, b)
    diff = first_difference(a, b)
    if diff and result.diff is None:
        result.diff = f"{name} {diff}"


# ---- output -----------------------------------------------------------------------------
HEADER = ("recipe", "report keys", "TB scalars", "TB hist/text", "ckpt tensors", "result")


def table(rows: list[Comparison]) -> str:
    cells = [HEADER] + [
        (
            r.recipe.removeprefix("recipes/"),
            str(r.report_keys),
            str(r.tb_scalars),
            str(r.tb_other),
            str(r.tensors),
            "equal" if r.diff is None else f"DIFF {r.diff}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER) - 1)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) + " | " + row[-1] for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 6)
    return "\n".join(lines)


def noise_summary(rows: list[Comparison]) -> str:
    """Every differing key, indices and steps folded, with the recipes it differed in."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        for part, keys in r.noisy.items():
            for key in keys:
                folded = _fold(key)
                seen.setdefault(f"{part}: {folded}", set()).add(r.recipe.removeprefix("recipes/"))
    if not seen:
        return "no differing keys"
    return "\n".join(f"  {k}  ({len(v)} recipes)" for k, v in sorted(seen.items()))


# ---- main -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="base tree folder or git rev (default /tmp/base, else HEAD)")
    p.add_argument("--current", type=Path, default=ROOT, help="current tree (default: this one)")
    p.add_argument("--recipes", nargs="+", metavar="GLOB", help="e.g. mlp 'zoo/*'")
    p.add_argument("--steps", type=int, help="override train.steps (default: the recipe's own)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per training")
    p.add_argument("--no-exclude", action="store_true", help="compare noise too; list all diffs")
    p.add_argument("--keep", action="store_true", help="keep the run folders (path printed)")
    p.add_argument("--worker", nargs=2, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_all(runs: list[Run], args: argparse.Namespace) -> dict[Run, Outcome]:
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = pool.map(lambda r: launch(r, args.steps, args.threads, args.timeout), runs)
        return {o.run: o for o in outcomes}


def compare_trees(base: Path, current: Path, scratch: Path, args: argparse.Namespace) -> int:
    recipes = find_recipes(current, args.recipes)
    if not recipes:
        raise SystemExit(f"no recipe in {current} matches {args.recipes}")
    print(
        f"base    {base}\ncurrent {current}\n{len(recipes)} recipes, steps: {args.steps or 'own'}"
    )
    trees = {"base": base, "current": current}
    runs = [
        Run(label, tree, recipe, scratch / label / recipe.removesuffix(".yaml"))
        for recipe in recipes
        for label, tree in trees.items()
    ]
    started = time.perf_counter()
    outcomes = run_all(runs, args)
    trained = time.perf_counter() - started
    for label in trees:
        files = {str(o.imported) for o in outcomes.values() if o.run.label == label and o.imported}
        print(f"{label} runs imported {', '.join(sorted(files)) or '(none got that far)'}")
    rows = [
        compare(r, outcomes[runs[2 * i]], outcomes[runs[2 * i + 1]], not args.no_exclude)
        for i, r in enumerate(recipes)
    ]
    print(table(rows))
    if args.no_exclude:
        print("differing keys (noise candidates):\n" + noise_summary(rows))
    total = time.perf_counter() - started
    print(f"{len(runs)} trainings in {trained:.0f}s, compared in {total - trained:.0f}s")
    return 0 if all(r.diff is None for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]), args.steps, args.threads)
    current = tree_root(args.current)
    scratch = Path(tempfile.mkdtemp(prefix="report_equality_"))
    try:
        with base_tree(args.base, current, scratch) as base:
            return compare_trees(base, current, scratch, args)
    finally:
        if args.keep:
            print(f"run folders kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
