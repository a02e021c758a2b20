"""report.json: written atomically (temp file + rename), read back for `gradoctor report`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gradoctor.errors import UsageError


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
