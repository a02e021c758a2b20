"""The predictive model: per-module statistics of a tracked step, and the replay of its memory
timeline under activation checkpointing, fitted linearly in the batch size.

Replay of a checkpointed module call ``c`` (non-reentrant ``torch.utils.checkpoint``), on the
timeline of the same step measured without checkpointing:

* a storage created inside ``c`` and saved for backward only by ops inside ``c`` is *dropped*:
  it is freed when ``c`` returns (an autocast weight copy when the forward's autocast region
  ends: autocast caches it until then), and allocated again at ``c``'s recomputation; one
  saved by ops outside ``c`` too is *shared*: the original lives until those ops' backward is
  done and the recomputation's copy replaces it (no net change);
* the recomputation runs when backward first unpacks a storage saved by an op inside ``c``
  (the tracker's unpack hook records when); its own curve is ``c``'s forward replayed: dropped
  and shared storages accumulate, unsaved ones come and go, and the autocast weight copies made
  inside ``c`` are made again (autocast's cache starts empty). Its peak above the recomputed
  storages is inserted as a spike at that point;
* ``c``'s inputs are kept alive by the checkpoint until ``c``'s backward has finished.

Batch size: two steps measured at different batch sizes run the same ops, so their events
pair up one to one. Each event's bytes are fitted as ``fixed + per_sample * batch``, which
gives the whole replayed curve at any batch size; its maximum is the predicted peak (the peak
may move, e.g. from the end of backward, where gradients dominate, to its start, where
activations do, as the batch grows). When the events do not pair up (data-dependent code), the
peak of each phase is fitted instead and the largest phase line is the prediction. On CUDA the
allocator's bytes that no tensor accounts for (cuBLAS/cuDNN workspaces, rounding, tensors that
existed before the step) are the measured peak minus the tracked peak, fitted linearly too; on CUDA each op's own
allocator peak (workspaces included) is a point of the curve as well.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from gradoctor.memory.tracking import PHASES, StepTrace

STEP_PHASES = ("forward", "backward", "optimizer")


@dataclass
class ModuleStats:
    """One module over the first micro-batch's forward. Bytes; ``drop`` is what checkpointing
    the module frees between its forward and its backward, ``spike`` what its recomputation
    allocates at once in backward."""

    qname: str
    kind: str
    calls: int
    saved: int  # distinct storages saved by ops running directly in this module
    saved_total: int  # ... by ops anywhere inside it (each storage once)
    drop: int
    spike: int


def outermost_calls(trace: StepTrace, names: Iterable[str]) -> dict[int, int]:
    """Forward call id -> id of its outermost enclosing call that ``names`` checkpoint (by
    qualified name or class name, as ``train.checkpoint`` matches)."""
    wanted = set(names)
    owner: dict[int, int] = {}
    for cid, call in enumerate(trace.calls):
        if call.phase != "forward":
            continue
        parent = owner.get(call.parent) if call.parent is not None else None
        if parent is not None:
            owner[cid] = parent
        elif call.qname in wanted or call.kind in wanted:
            owner[cid] = cid
    return owner


@dataclass
class Recomputed:
    """What checkpointing one call changes (record indices): ``dropped`` storages are freed
    when the call returns and allocated again by its recomputation; ``shared`` ones are also
    saved by ops outside the call: the original lives until those ops' backward is done, and
    the recomputation's copy takes its place for the call's own backward (no net change, but
    their unpacking marks when the recomputation runs)."""

    dropped: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)

    @property
    def all(self) -> list[int]:
        return self.dropped + self.shared


def recomputed_records(trace: StepTrace, owner: dict[int, int]) -> dict[int, Recomputed]:
    """Checkpointed call id -> the storages its checkpointing drops or duplicates (see the
    module docstring). A saved storage never freed in a step with a backward is held elsewhere:
    left alone."""
    with_backward = ("backward", 0) in trace.phase_ranges
    out: dict[int, Recomputed] = {}
    for idx, r in enumerate(trace.records):
        if r.alloc < 0 or not r.saved_by or r.phase != "forward":
            continue
        if with_backward and r.free is None:
            continue
        c = next((owner[cid] for cid in r.stack if cid in owner), None)
        if c is None:
            continue
        inside = [c in stack for stack in r.saved_by]
        if all(inside):
            out.setdefault(c, Recomputed()).dropped.append(idx)
        elif any(inside):
            out.setdefault(c, Recomputed()).shared.append(idx)
    return out


def last_packs(trace: StepTrace) -> dict[int, int]:
    """Call id -> position of the last tensor saved for backward by an op inside the call
    (parameters included). A checkpoint's recomputation stops right there (early stop, on by
    default in ``torch.utils.checkpoint``): the ops after it do not run again."""
    last: dict[int, int] = {}
    for pos, stack in trace.packs:
        for cid in stack:
            last[cid] = max(last.get(cid, pos), pos)
    return last


def held_state(trace: StepTrace, call_id: int) -> dict[int, tuple[tuple[int, int], int, int]]:
    """Storages created in the call that state objects among its inputs (a KV ``Cache``) still
    reach when it returns: record index -> ``(token, bytes, bytes its recomputation makes)``.

    Checkpointed, the call's recomputation runs its code again against the state its forward
    left: a cache that its forward filled by concatenation (``torch.cat([old, new])``, the
    ``DynamicCache`` pattern) is appended to once more, so the recomputed storage holds the
    entry's bytes plus twice the new ones; any other replacement keeps its size."""
    out: dict[int, tuple[tuple[int, int], int, int]] = {}
    for token, idx, entry in trace.calls[call_id].held:
        n = trace.records[idx].nbytes
        grown = 2 * n - entry if trace.records[idx].op.startswith("aten.cat") else n
        out[idx] = (token, n, max(grown, n))
    return out


def graph_kept(trace: StepTrace, call_id: int, held: Iterable[int]) -> set[int]:
    """Storages that the autograd graph of the call's recomputed ``held`` storages keeps alive
    as long as the state holding them does: the recomputation runs with grad enabled, so a
    recomputed tensor that escapes into the state carries its graph, whose nodes hold what their
    ops saved (the recomputed copies). The ops are those the held storages derive from inside
    the call (data flow, by each op's input records); kept: their outputs and the call's inputs
    they read that an op inside the call saved."""
    call = trace.calls[call_id]
    recs = trace.records
    inside = lambda i: call.enter <= recs[i].alloc < call.exit  # noqa: E731
    inputs = set(call.inputs)
    ops: set[int] = set()
    seen: set[int] = set()
    todo = [i for i in held if inside(i)]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        if inside(i):
            ops.add(recs[i].op_id)
            todo.extend(recs[i].sources)
    siblings = {i for i in range(len(recs)) if recs[i].op_id in ops and inside(i)}
    return {
        i for i in (seen & inputs) | siblings if any(call_id in stack for stack in recs[i].saved_by)
    } - set(held)


def _recompute_peak(
    trace: StepTrace,
    call_id: int,
    kept: Iterable[int],
    stop: int | None = None,
    held: dict[int, tuple[tuple[int, int], int, int]] | None = None,
) -> int:
    """Peak bytes the call's recomputation holds at once, replaying its forward up to ``stop``
    (its last save; the call's end when unknown): the ``kept`` storages (saved inside it,
    recomputed for its backward) accumulate, every other storage it creates comes and goes as
    in the forward (those saved only by ops after the call are dropped when the recomputation
    stops), and the autocast weight copies made inside it count as well (autocast's cache is
    empty when the recomputation starts, so it casts those weights again). On CUDA each op's
    own allocator peak inside the call (its outputs and workspace, e.g. cuDNN's) recurs.
    ``held`` storages (``held_state``) are made again at their recomputed size while the state
    still holds the forward's version, until it is replaced."""
    call = trace.calls[call_id]
    end = call.exit if stop is None else min(max(stop, call.enter), call.exit)
    keep = set(kept)
    held = held or {}
    pending = sum(  # the forward's versions, alive until the recomputation replaces them
        old for idx, (_, old, _) in held.items() if call.enter <= trace.records[idx].alloc < end
    )
    op_peaks: dict[int, int] = {}  # event position -> largest op peak starting there
    lo = bisect.bisect_left(trace.op_spikes, (call.enter, -1))
    for pos, extra in trace.op_spikes[lo:]:
        if pos >= end:
            break
        op_peaks[pos] = max(op_peaks.get(pos, 0), extra)
    kept_bytes = live = peak = 0
    for i in range(call.enter, end):
        if i in op_peaks:
            peak = max(peak, kept_bytes + live + pending + op_peaks[i])
        idx, sign = trace.events[i]
        r = trace.records[idx]
        if not (call.enter <= r.alloc < call.exit):
            continue
        if idx in held:
            if sign > 0:
                kept_bytes += held[idx][2]
                peak = max(peak, kept_bytes + live + pending)
                pending -= held[idx][1]
            continue
        if idx in keep:
            kept_bytes += r.nbytes if sign > 0 else 0
        else:
            live += sign * r.nbytes
        peak = max(peak, kept_bytes + live + pending)
    return peak


def module_stats(trace: StepTrace) -> list[ModuleStats]:
    """Per-module saved bytes and checkpointing effect, for every module called in forward."""
    by_name: dict[str, list[int]] = {}
    for cid, call in enumerate(trace.calls):
        if call.phase == "forward" and call.micro == 0:
            by_name.setdefault(call.qname, []).append(cid)
    direct: dict[int, set[int]] = {}  # call id -> records saved directly in it
    inside: dict[int, set[int]] = {}  # call id -> records saved anywhere inside it
    for idx, r in enumerate(trace.records):
        for stack in r.saved_by:
            if stack:
                direct.setdefault(stack[-1], set()).add(idx)
            for cid in stack:
                inside.setdefault(cid, set()).add(idx)
    stops = last_packs(trace)  # once for every module below
    stats = []
    for qname, cids in by_name.items():
        owner = {cid: cid for cid in cids}
        for cid, call in enumerate(trace.calls):  # descendants of these calls
            if call.parent in owner and cid not in owner:
                owner[cid] = owner[call.parent]
        redo = recomputed_records(trace, owner)
        size = lambda ids: sum(trace.records[i].nbytes for i in ids)  # noqa: E731
        held = {c: held_state(trace, c) for c in cids if c in redo}
        drop = sum(  # what state objects hold stays alive
            size(i for i in x.dropped if i not in held[c]) for c, x in redo.items()
        )
        spike = max(  # shared storages are alive anyway: their recomputed copies replace them
            (
                _recompute_peak(trace, c, redo[c].all, stops.get(c), held[c])
                - size(i for i in redo[c].shared if i not in held[c])
                - sum(old for _, old, _ in held[c].values())
                for c in cids
                if c in redo
            ),
            default=0,
        )
        stats.append(
            ModuleStats(
                qname=qname,
                kind=trace.calls[cids[0]].kind,
                calls=len(cids),
                saved=size(set().union(*(direct.get(c, set()) for c in cids))),
                saved_total=size(set().union(*(inside.get(c, set()) for c in cids))),
                drop=drop,
                spike=spike,
            )
        )
    return stats


@dataclass
class Replay:
    """Peak bytes per phase (static bytes included) and where the overall peak is."""

    phase_peaks: dict[str, int]
    peak: int
    peak_event: int
    peak_phase: str
    curve: np.ndarray  # bytes alive after each event (int64, static included), with
    #                    recomputation spikes inserted as extra points
    phases: np.ndarray | None = None  # PHASES index of each curve point


def replay(trace: StepTrace, checkpoint: Iterable[str] = ()) -> Replay:
    """The step's memory curve with ``checkpoint`` applied (module docstring): the qualified
    names ``checkpoint_targets`` resolves a recipe's names to (class names match too). Without
    checkpointing this is exactly the measured tracked curve."""
    n = len(trace.events)
    recs = trace.records
    delta = np.zeros(n + 1, dtype=np.int64)
    for i, (idx, sign) in enumerate(trace.events):
        delta[i] = sign * recs[idx].nbytes
    own = delta[:n].copy()
    spikes: dict[int, int] = {}
    names = list(checkpoint)
    if names:
        _apply_checkpointing(trace, names, delta, spikes)
    static = sum(trace.static.values())
    live = static + np.cumsum(delta[:n])
    phases = np.array([PHASES.index(p) for p in trace.event_phase], dtype=np.int64)
    points: list[tuple[int, int]] = []  # (insert before event, bytes alive at that moment)
    before = np.concatenate([[static], live[:-1]]) if n else np.array([static])
    for i, extra in sorted(spikes.items()):  # a recomputation's transients, before event i
        if i < n:
            points.append((i, int(live[i] - own[i] + extra)))
    for i, extra in trace.op_spikes:  # CUDA: an op's own peak (its outputs and workspace)
        if i < n:
            points.append((i, int(before[i] + delta[i] - own[i] + extra)))
    if points:
        at = np.array([i for i, _ in points], dtype=np.int64)
        values = np.array([v for _, v in points], dtype=np.int64)
        live, phases = np.insert(live, at, values), np.insert(phases, at, phases[at])
    peaks = {}
    for name in STEP_PHASES:
        mask = phases == PHASES.index(name)
        peaks[name] = int(live[mask].max()) if mask.any() else static
    if n == 0:
        return Replay(peaks, static, -1, "forward", live)
    i = int(np.argmax(live))
    return Replay(peaks, max(int(live[i]), static), i, PHASES[int(phases[i])], live, phases)


def _apply_checkpointing(
    trace: StepTrace, names: list[str], delta: np.ndarray, spikes: dict[int, int]
) -> None:
    recs = trace.records
    owner = outermost_calls(trace, names)
    saved_frees = sorted(r.free for r in recs if r.saved_by and r.free is not None and r.alloc >= 0)
    retained: dict[int, int] = {}  # input record -> event index where the checkpoint releases it
    stops = last_packs(trace)
    redone = recomputed_records(trace, owner)
    released: dict[tuple[int, int], int] = {}  # state object -> when the last checkpoint that
    for cid, redo in redone.items():  # holds it (as an input) is done with its backward
        release = max(recs[i].free for i in redo.all)
        for token in trace.calls[cid].states:
            released[token] = max(released.get(token, 0), release)
    for cid, redo in redone.items():
        call = trace.calls[cid]
        fwd_end = trace.phase_ranges.get(("forward", call.micro), (0, call.exit))[1]
        bwd_start = trace.phase_ranges.get(("backward", call.micro), (fwd_end, fwd_end))[0]
        recompute = _recompute_event(trace, cid, redo, saved_frees, bwd_start)
        held = held_state(trace, cid)
        late = max((released[t] for t in call.states if t in released), default=0)
        for i in graph_kept(trace, cid, held) if held else ():
            r = recs[i]  # the recomputed copy (or the input) lives as long as the state
            if r.free is None or late <= r.free:
                continue
            if r.alloc >= 0 and call.enter <= r.alloc < call.exit:
                delta[r.free] += r.nbytes
                delta[late] -= r.nbytes
            else:
                retained[i] = max(retained.get(i, 0), late)
        for i, (token, old, new) in held.items():  # the state keeps the forward's version until
            r = recs[i]  # the recomputation replaces it, and that one until the checkpoint goes
            delta[recompute] += new - old
            if r.free is not None:
                delta[r.free] += old
                delta[max(released.get(token, r.free), r.free)] -= new
        for i in redo.dropped:  # freed early, allocated again by the recomputation
            if i in held:
                continue
            r = recs[i]
            gone = trace.natural_free.get(i, call.exit)  # once the module's code drops it
            delta[fwd_end if r.param_cast else min(max(gone, r.alloc + 1), call.exit)] -= r.nbytes
            delta[recompute] += r.nbytes
        for i in redo.shared:  # the original goes when the savers after the call let go of it;
            if i in held:  # the recomputation's copy lives until the original's release
                continue
            r = recs[i]
            outside = [pos for pos, stack in r.released if cid not in stack]
            if outside:
                delta[max(outside)] -= r.nbytes
                delta[recompute] += r.nbytes
        extra = _recompute_peak(trace, cid, redo.all, stops.get(cid), held)
        extra -= sum(recs[i].nbytes for i in redo.all if i not in held)
        extra -= sum(new for _, _, new in held.values())
        spikes[recompute] = spikes.get(recompute, 0) + max(extra, 0)
        release = max(recs[i].free for i in redo.all)
        for i in call.inputs:  # the checkpoint holds its inputs until its backward is done
            r = recs[i]
            if r.alloc >= 0 and r.free is not None and r.free < release:
                retained[i] = max(retained.get(i, 0), release)
    for i, release in retained.items():
        delta[recs[i].free] += recs[i].nbytes
        delta[release] -= recs[i].nbytes


def natural_frees(trace: StepTrace, nograd: StepTrace) -> dict[int, int]:
    """Where each storage created in ``trace``'s forward would be freed if autograd saved
    nothing: the position, in ``trace``, of the first allocation that follows its free in
    ``nograd`` (the same forward run under ``torch.no_grad``, where only the model's code holds
    tensors). This is how a checkpointed module's own forward frees what it would have saved.

    The two forwards' allocations are aligned by op name (``difflib``; same code, same ops; a
    batch size may differ). Unaligned storages, and those ``nograd`` never frees, are left out."""
    ng = [(pos, idx) for pos, (idx, sign) in enumerate(nograd.events) if sign > 0]
    ng_ops = [nograd.records[idx].op for _, idx in ng]
    out: dict[int, int] = {}
    for (phase, _micro), (start, end) in trace.phase_ranges.items():
        if phase != "forward":
            continue
        allocs = [
            (pos, idx)
            for pos in range(start, end)
            for idx, sign in (trace.events[pos],)
            if sign > 0 and trace.records[idx].alloc == pos
        ]
        ops = [trace.records[idx].op for _, idx in allocs]
        matcher = difflib.SequenceMatcher(None, ops, ng_ops, autojunk=False)
        pairs = [(b.a + k, b.b + k) for b in matcher.get_matching_blocks() for k in range(b.size)]
        ng_pos = [ng[j][0] for _, j in pairs]  # increasing
        for i, j in pairs:
            free = nograd.records[ng[j][1]].free
            if free is None:
                continue
            k = bisect.bisect_right(ng_pos, free)  # the first aligned allocation after it
            out[allocs[i][1]] = allocs[pairs[k][0]][0] if k < len(pairs) else end
    return out


def _recompute_event(
    trace: StepTrace, cid: int, redo: Recomputed, saved_frees: list[int], bwd_start: int
) -> int:
    """Event index before which the recomputation of call ``cid`` runs: the first time backward
    unpacks a storage that an op inside the call saved (recorded by the tracker's unpack hook).
    Traces without unpack records fall back to just after the last release of a saved storage
    that precedes the first release of one of the call's storages."""
    unpacks = [
        event for i in redo.all for event, stack in trace.records[i].unpacked if cid in stack
    ]
    if unpacks:
        return max(min(unpacks), bwd_start)
    first_free = min(trace.records[i].free for i in redo.all)
    k = bisect.bisect_left(saved_frees, first_free) - 1
    return saved_frees[k] + 1 if k >= 0 and saved_frees[k] >= bwd_start else bwd_start


@dataclass
class Line:
    """``fixed + per_sample * batch`` (bytes)."""

    fixed: float
    per_sample: float

    def __call__(self, batch: float) -> float:
        return self.fixed + self.per_sample * batch

    @staticmethod
    def through(points: list[tuple[int, float]]) -> Line:
        """Least squares over ``(batch, bytes)`` points; one point gives a flat line."""
        if len({b for b, _ in points}) < 2:
            return Line(float(points[0][1]), 0.0)
        b = np.array([p[0] for p in points], dtype=np.float64)
        y = np.array([p[1] for p in points], dtype=np.float64)
        slope, fixed = np.polyfit(b, y, 1)
        return Line(float(fixed), float(slope))


@dataclass
class PeakModel:
    """Predicted peak of one (precision, checkpoint set) as a function of the batch size.

    ``curves`` (when the measured steps pair up) maps batch size -> replayed curve; otherwise
    ``phases`` holds one line per phase. ``residual`` is zero on CPU."""

    phases: dict[str, Line]
    residual: Line
    curves: dict[int, np.ndarray] | None = None
    phase_codes: np.ndarray | None = None
    static: int = 0
    measured: dict[int, tuple[int, str]] = field(default_factory=dict)  # batch -> replayed
    #   (peak, phase) of the step measured at that batch size: exact there

    def _curve(self, batch: float) -> np.ndarray:
        (b0, c0), (b1, c1) = sorted(self.curves.items())[:2]
        return c0 + (batch - b0) * (c1 - c0) / (b1 - b0)

    def __call__(self, batch: int) -> int:
        if batch in self.measured:
            tracked = float(self.measured[batch][0])
        elif self.curves is not None:
            tracked = max(float(self._curve(batch).max()), float(self.static))
        else:
            tracked = max(line(batch) for line in self.phases.values())
        return int(round(tracked + self.residual(batch)))

    def phase_of_peak(self, batch: int) -> str:
        if batch in self.measured:
            return self.measured[batch][1]
        if self.curves is not None and len(self._curve(batch)):
            return PHASES[int(self.phase_codes[int(np.argmax(self._curve(batch)))])]
        return max(self.phases, key=lambda p: self.phases[p](batch))

    def per_sample(self, batch: int) -> float:
        """Slope of the predicted peak at ``batch`` (bytes per sample)."""
        return float(self(batch + 1) - self(batch))

    def max_batch(self, budget: int, limit: int = 1 << 20) -> int:
        """Largest batch size whose predicted peak fits ``budget`` (0: not even 1; capped)."""
        if self(1) > budget:
            return 0
        lo, hi = 1, 2
        while hi < limit and self(hi) <= budget:
            lo, hi = hi, hi * 2
        hi = min(hi, limit)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self(mid) <= budget else (lo, mid)
        return hi if self(hi) <= budget else lo


def paired(a: StepTrace, b: StepTrace) -> bool:
    """Whether two steps ran the same sequence of allocations and frees (so events pair up)."""
    if len(a.events) != len(b.events) or len(a.op_spikes) != len(b.op_spikes):
        return False
    return all(
        ea[1] == eb[1] and a.records[ea[0]].op == b.records[eb[0]].op
        for ea, eb in zip(a.events, b.events)
    )


def fit_peak_model(
    traces: dict[int, StepTrace], checkpoint: Iterable[str], residuals: dict[int, int] | None
) -> PeakModel:
    """Fit a :class:`PeakModel` from tracked steps at one or more batch sizes."""
    names = list(checkpoint)
    replays = {b: replay(t, names) for b, t in traces.items()}
    phases = {
        p: Line.through([(b, r.phase_peaks[p]) for b, r in replays.items()]) for p in STEP_PHASES
    }
    residual = Line.through(sorted(residuals.items())) if residuals else Line(0.0, 0.0)
    model = PeakModel(phases, residual)
    model.measured = {b: (r.peak, r.peak_phase) for b, r in replays.items()}
    # the curve: the two largest batch sizes whose steps pair up event by event (at batch 1,
    # size-1 dimensions can change the ops, e.g. a reshape that no longer copies)
    pairs = [
        (a, b) for a, b in itertools.combinations(sorted(traces), 2) if paired(traces[a], traces[b])
    ]
    if pairs:
        a, b = max(pairs, key=lambda ab: (ab[1], ab[0]))
        model.curves = {s: replays[s].curve.astype(np.float64) for s in (a, b)}
        model.phase_codes = replays[a].phases
        model.static = sum(traces[a].static.values())
    return model
