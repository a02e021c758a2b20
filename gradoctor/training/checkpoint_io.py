"""Resumable checkpoints: written atomically (temp file + rename), loaded with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from gradoctor.errors import UsageError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find_checkpoint(path: Path) -> Path:
    """``path`` is a checkpoint file or a run folder holding ``checkpoint.pt``."""
    candidate = path / CHECKPOINT_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise UsageError(
            f"no checkpoint at '{path}'",
            hint=f"pass a run folder containing {CHECKPOINT_NAME} (written at the end of a run) or the file itself",
        )
    return candidate


def load_checkpoint(path: Path) -> dict[str, Any]:
    file = find_checkpoint(path)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"cannot load checkpoint '{file}': {exc}", hint="is it a gradoctor checkpoint?"
        ) from exc
