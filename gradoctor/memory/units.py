"""Byte sizes: parsing ``--budget 10GiB`` and ``--batch-sizes 8,16,32``, and formatting bytes."""

from __future__ import annotations

import math
import re

from gradoctor.errors import UsageError

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
ACCEPTED_UNITS = "B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)"
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str | int | float) -> int:
    """``"10GiB"`` -> 10737418240. A bare number is bytes; units are case-insensitive.

    Raises UsageError for an unknown unit (naming the accepted ones) or a non-positive size.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "b"
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise UsageError(
                f"cannot read '{text}' as a memory size",
                hint=f"write a number and a unit, e.g. 10GiB or 512MB; units: {ACCEPTED_UNITS}",
            )
        value, unit = float(match.group(1)), (match.group(2) or "b").lower()
    if unit not in _UNITS:
        raise UsageError(
            f"unknown unit '{match.group(2)}' in memory size '{text}'",
            hint=f"accepted units: {ACCEPTED_UNITS}",
        )
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise UsageError(f"memory size '{text}' must be at least 1 byte")
    return int(size)


def parse_batch_sizes(text: str | list[int] | tuple[int, ...] | None) -> list[int] | None:
    """``"8,16,32"`` -> ``[8, 16, 32]`` (sorted, deduplicated); None stays None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    sizes: set[int] = set()
    for item in items:
        try:
            size = int(str(item).strip())
        except ValueError:
            raise UsageError(
                f"batch size '{str(item).strip()}' is not an integer",
                hint="write --batch-sizes 8,16,32",
            ) from None
        if size < 1:
            raise UsageError(f"batch size {size} must be >= 1", hint="write --batch-sizes 8,16,32")
        sizes.add(size)
    if not sizes:
        raise UsageError("--batch-sizes is empty", hint="write --batch-sizes 8,16,32")
    return sorted(sizes)


def format_bytes(n: float | None) -> str:
    """Binary units with 3 significant digits: ``format_bytes(1536) == "1.5 KiB"``. Every
    report (train, memory-profile, OOM diagnoses) writes bytes with it."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "B":
        return f"{sign}{int(n)} B"
    return f"{sign}{n:.3g} {unit}" if n < 100 else f"{sign}{n:.0f} {unit}"


def format_flops(n: float | None) -> str:
    """Decimal units with 3 significant digits: ``format_flops(5.03e7) == "50.3 MFLOP"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"):
        if abs(n) < 1000 or unit == "PFLOP":
            break
        n /= 1000
    if unit == "FLOP":
        return f"{int(n)} FLOP"
    return f"{n:.3g} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
