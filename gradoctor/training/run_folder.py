"""A fresh run never silently replaces another run's outputs.

The convention (as Hugging Face's ``overwrite_output_dir``): a fresh run into a folder that
already holds a run's outputs (``report.json``, ``checkpoint.pt``, TensorBoard events) is
refused with exit 2, naming what is there and the three ways on: ``--resume`` to continue
it, ``--overwrite`` to replace it, or another ``output.dir``. With ``overwrite`` the old
outputs are deleted before the new run writes anything, so the folder never mixes two runs.
Cost: one directory listing at start.
"""

from __future__ import annotations

import json
from pathlib import Path

from gradoctor.errors import UsageError

OUTPUT_FILES = ("report.json", "checkpoint.pt", "recipe.yaml")
EVENTS_GLOB = "events.out.tfevents.*"


def previous_outputs(out_dir: Path) -> list[Path]:
    """The run outputs already in ``out_dir`` (empty for a new or empty folder)."""
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in OUTPUT_FILES if (out_dir / name).is_file()]
    return found + sorted(out_dir.glob(EVENTS_GLOB))


def _label(path: Path) -> str:
    return "TensorBoard events" if path.match(EVENTS_GLOB) else path.name


def _describe(out_dir: Path) -> str:
    try:
        report = json.loads((out_dir / "report.json").read_text())
        return f"a {report['status']} run of {report['steps_completed']} step(s)"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run's outputs"


def claim_run_folder(out_dir: Path, *, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a fresh run: refuse (UsageError) when it holds a previous
    run's outputs, unless ``overwrite``, which deletes them. Call with the folder's lock held."""
    found = previous_outputs(out_dir)
    if not found:
        return
    if not overwrite:
        names = ", ".join(dict.fromkeys(_label(p) for p in found))
        raise UsageError(
            f"the output folder {out_dir} already holds {_describe(out_dir)} ({names})",
            hint=f"continue it with --resume {out_dir}, replace it with --overwrite, or "
            f"write elsewhere with output.dir=<another folder>",
        )
    for path in found:
        path.unlink(missing_ok=True)


__all__ = ["claim_run_folder", "previous_outputs"]
