"""Memory profiling of a recipe's training steps (``gradoctor memory-profile``).

``memory_profile(recipe, ...) -> MemoryProfile``: measured breakdown, per-module saved bytes,
the peak, a what-if table (precision x checkpointing x batch size), a checkpoint plan for a
budget and a predicted-vs-measured self-check. ``oom.oom_diagnosis`` explains an OOM in
``gradoctor train`` with the same planner.
"""

from gradoctor.memory.api import memory_profile
from gradoctor.memory.result import MemoryProfile
from gradoctor.memory.units import format_bytes, parse_bytes

__all__ = ["MemoryProfile", "format_bytes", "memory_profile", "parse_bytes"]
