"""Choose the modules to activation-checkpoint: fit a memory budget with the least recompute.

The additive model the search uses: checkpointing a set S of modules (no module inside another)
lowers the peak by ``sum(drop)`` and adds, during backward, the recomputation spike of one
module at a time, so ``peak(S) ~= peak(empty) - sum(drop(m)) + max(spike(m))``; the cost is
``sum(cost(m))`` (recompute FLOPs, or forward time for modules without FLOPs).

For each cap K on the spike (a few distinct spike values), a tree knapsack over the module
hierarchy finds the cheapest antichain whose drops cover ``peak(empty) - budget + K``; drops
are counted in ``units`` buckets, rounded down (a conservative cover). Every candidate is then
checked with the exact replay (``peak_of``); when the replay still exceeds the budget the cover
is raised by the excess and searched again; at the end, modules whose removal still fits are
removed (most costly first). Cost: ``O(modules * units^2)`` per search, numpy-vectorized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    qname: str
    drop: int  # bytes freed between the module's forward and its backward
    spike: int  # bytes its recomputation allocates at once in backward
    cost: float  # recompute cost (FLOPs, or FLOP-equivalent forward time)


@dataclass
class PlanSearch:
    modules: list[str]  # chosen, in model order
    peak: int  # replayed peak with them checkpointed
    cost: float
    fits: bool


class _Table:
    """``cost[k]``: least cost to drop at least ``k`` units; ``pick(k)``: the modules."""

    def __init__(self, cost: np.ndarray, pick: Callable[[int], list[str]]):
        self.cost, self.pick = cost, pick


def _empty(units: int) -> _Table:
    cost = np.full(units + 1, np.inf)
    cost[0] = 0.0
    return _Table(cost, lambda k: [])


def _single(name: str, value: int, cost: float, units: int) -> _Table:
    table = np.full(units + 1, np.inf)
    table[: min(value, units) + 1] = cost
    table[0] = 0.0
    return _Table(table, lambda k: [name] if k > 0 else [])


def _merge(a: _Table, b: _Table, units: int) -> _Table:
    """Min-plus convolution capped at ``units``, keeping the argmin for reconstruction."""
    total = a.cost[:, None] + b.cost[None, :]
    reach = np.minimum(np.add.outer(np.arange(units + 1), np.arange(units + 1)), units)
    flat_cost, flat_reach = total.ravel(), reach.ravel()
    order = np.lexsort((flat_cost, flat_reach))
    first = np.r_[True, flat_reach[order][1:] != flat_reach[order][:-1]]
    exact = np.full(units + 1, np.inf)
    arg = np.zeros(units + 1, dtype=np.int64)
    exact[flat_reach[order][first]] = flat_cost[order][first]
    arg[flat_reach[order][first]] = order[first]
    # "at least k": the cheapest exact reach k' >= k
    best = np.minimum.accumulate(exact[::-1])[::-1]
    source = np.empty(units + 1, dtype=np.int64)
    current = units
    for k in range(units, -1, -1):
        if exact[k] <= exact[current]:
            current = k
        source[k] = current

    def pick(k: int) -> list[str]:
        if not np.isfinite(best[k]):
            return []
        i, j = divmod(int(arg[source[k]]), units + 1)
        return a.pick(i) + b.pick(j)

    return _Table(best, pick)


def _either(a: _Table, b: _Table) -> _Table:
    use_b = b.cost < a.cost
    return _Table(np.where(use_b, b.cost, a.cost), lambda k: b.pick(k) if use_b[k] else a.pick(k))


def min_cost_cover(cands: list[Candidate], need: int, units: int = 64) -> list[str] | None:
    """Cheapest set of candidates, none inside another (by qualified name), whose drops sum to
    at least ``need`` bytes; None when even all of them cannot. Exact when ``need`` and the
    drops share a divisor leaving at most 256 buckets, else conservative with ``units``."""
    if need <= 0:
        return []
    items = [c for c in cands if c.drop > 0]
    divisor = math.gcd(int(need), *(int(c.drop) for c in items))
    if need // divisor <= 256:
        units = int(need // divisor)
    unit = need / units
    names = {c.qname for c in items}
    children: dict[str | None, list[Candidate]] = {}
    for c in items:
        children.setdefault(parent_of(c.qname, names), []).append(c)

    def solve(c: Candidate) -> _Table:
        kids = _empty(units)
        for child in children.get(c.qname, []):
            kids = _merge(kids, solve(child), units)
        own = _single(c.qname, int(math.floor(c.drop / unit)), c.cost, units)
        return _either(kids, own)

    table = _empty(units)
    for root in children.get(None, []):
        table = _merge(table, solve(root), units)
    if not np.isfinite(table.cost[units]):
        return None
    return table.pick(units)


def parent_of(qname: str, names: set[str]) -> str | None:
    parts = qname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in names:
            return prefix
    return None


def plan(
    cands: list[Candidate],
    peak_of: Callable[[list[str]], int],
    budget: int,
    order: list[str] | None = None,
) -> PlanSearch:
    """The cheapest checkpoint set whose replayed peak ``peak_of(set)`` fits ``budget``. When
    nothing fits, the set with the lowest replayed peak among those tried, ``fits=False``."""
    rank = {q: i for i, q in enumerate(order or [c.qname for c in cands])}
    cost_of = {c.qname: c.cost for c in cands}

    def result(mods: list[str]) -> PlanSearch:
        mods = sorted(set(mods), key=lambda q: rank.get(q, len(rank)))
        peak = peak_of(mods)
        return PlanSearch(mods, peak, sum(cost_of.get(m, 0.0) for m in mods), peak <= budget)

    base = peak_of([])
    if base <= budget:
        return result([])
    useful = [c for c in cands if c.drop > 0]
    best: PlanSearch | None = None
    lowest = result([])  # when nothing fits: the tried set with the lowest peak
    for cap in _spike_caps(useful):
        pool = [c for c in useful if c.spike <= cap]
        names = {c.qname for c in pool}
        widest = result([c.qname for c in pool if parent_of(c.qname, names) is None])
        lowest = min(lowest, widest, key=lambda r: (r.peak, r.cost))
        need = base - budget + cap
        for _ in range(4):
            chosen = min_cost_cover(pool, need)
            if chosen is None:
                break
            found = result(chosen)
            lowest = min(lowest, found, key=lambda r: (r.peak, r.cost))
            if found.fits:
                if best is None or found.cost < best.cost:
                    best = found
                break
            need += found.peak - budget
        if widest.fits and (best is None or widest.cost < best.cost):
            best = widest
    if best is None:  # nothing fits: the lowest peak, without modules that do not lower it
        mods, target = list(lowest.modules), lowest.peak
    else:  # the cheapest that fits, without modules it fits without
        mods, target = list(best.modules), budget
    for m in sorted(mods, key=lambda q: -cost_of.get(q, 0.0)):
        trial = [x for x in mods if x != m]
        if peak_of(trial) <= target:
            mods = trial
    return result(mods)


def _spike_caps(cands: list[Candidate], most: int = 8) -> list[int]:
    spikes = sorted({c.spike for c in cands})
    if len(spikes) <= most:
        return spikes
    picks = {spikes[round(i * (len(spikes) - 1) / (most - 1))] for i in range(most)}
    return sorted(picks)
