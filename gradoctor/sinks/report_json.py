"""report.json: written atomically (temp file + rename), read back for `gradoctor report`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gradoctor.errors import UsageError


def write_json_atomic(path: Path, data: dict[str, Any], **dump: Any) -> None:
    """``data`` as indented JSON at ``path`` (temp file + rename). ``dump``: ``json.dump``
    options (default: non-finite floats refused; report.json writes them as strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, **({"allow_nan": False} | dump))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_json_target(path: Path, option: str = "--json") -> None:
    """Before a command runs: ``path`` can take its JSON output (its folder is created), so
    a run is never lost, or turned into a failure, over where its result goes."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory", hint="give a file path, e.g. out.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{option} {path}: cannot create its folder ({exc.strerror or exc})",
            hint="give a path whose parent is a folder you can write",
        ) from exc


def write_json_output(path: Path, data: dict[str, Any], option: str = "--json") -> None:
    """A command's JSON output, written atomically; UsageError naming the option on failure."""
    try:
        write_json_atomic(path, data, default=str, allow_nan=True)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot write {option} {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; UsageError naming the file when it is empty, truncated,
    not JSON or not an object."""
    fix = "it may have been cut short by a killed process; rerun the command that writes it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"'{path}' is not valid JSON ({exc})", hint=fix) from None
    if not isinstance(data, dict):
        raise UsageError(f"'{path}' holds a JSON {type(data).__name__}, not an object", hint=fix)
    return data
