"""Analytic against numeric Jacobians of a ``FlatFunction`` ``f: R^N -> R^M`` (float64).

Two modes, chosen by cost:

- **full** (``2N + M`` calls affordable): the numeric Jacobian by central differences, one
  column per input element (``2N`` forwards), the analytic one row per output element (one
  forward, ``M`` backwards), compared entry by entry with
  ``|a - n| <= atol * max|J_n| + rtol * |n| + noise`` where ``noise`` bounds the rounding
  error of the difference quotient (``64 eps |f| / h``).
- **probes** (large inputs): for Rademacher (+-1) vectors ``u`` (inputs) and ``v`` (outputs),
  ``v . (f(x + h u) - f(x - h u)) / 2h`` against ``(J^T v) . u`` (two forwards, one backward).
  Because ``|u_j v_i| = 1``, a single wrong entry changes the probe by exactly its error, so
  any single wrong entry above the probe's tolerance (its *sensitivity*, reported) is found
  by every probe; several wrong entries cancel in one probe with probability <= 1/2. A failing
  probe is bisected over input elements (``2 log2 N`` forwards per wrong element) and then
  over output elements (backwards) down to single Jacobian entries.

Kinks (one rule, ``_kink_rows``, for every comparison, whichever check runs it): where the
one-sided differences disagree and keep disagreeing at a 10x smaller step, the entry is a
non-differentiable point, not a failure, as long as the analytic value lies between the
one-sided derivatives; where the central quotient does not converge (a jump, as in the double
backward of any piecewise-linear layer) no derivative exists to compare. Full mode applies the
rule to every disagreeing entry, probe mode to every entry of a located column. A probe whose
error sits on no single element (it appears only when elements move together, which happens
only at a jump) is judged by the same rule along the probe direction. Either way the
comparison is then repeated just off the kinks on both sides (``x +- delta``) and only
failures there count. A located mismatch therefore always has analytic != numeric.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from gradoctor.gradcheck.result import Mismatch
from gradoctor.gradcheck.target import FlatFunction

EPS64 = float(torch.finfo(torch.float64).eps)
FULL_BUDGET = 3000  # calls (2N + M) below which the full Jacobian is computed
MAX_LEAVES = 8  # wrong input elements located per probe
MAX_KINK_COLUMNS = 64


@dataclass
class Comparison:
    """Outcome of one analytic-vs-numeric comparison."""

    ok: bool
    mode: str  # "full" | "probes" | "empty" | "non-finite"
    mismatches: list[Mismatch] = field(default_factory=list)
    kinks: list[str] = field(default_factory=list)
    max_rel_error: float = 0.0
    sensitivity: float | None = None  # probes: smallest single-entry error surely found
    message: str = ""


def step_size(x: torch.Tensor) -> float:
    """Central-difference step: gradcheck's 1e-6, scaled down (to 1e-9) for inputs whose RMS
    magnitude is below 1, so the step stays small against the inputs' own scale."""
    rms = float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
    return 1e-6 * min(1.0, max(rms, 1e-3))


def rademacher(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1


def compare(
    fn: FlatFunction,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    mode: str = "auto",
    n_probes: int = 2,
    seed: int = 0,
    context: str = "",
    x: torch.Tensor | None = None,
    jitter: bool = True,
) -> Comparison:
    """Compare J^T from backward with central differences at ``x`` (default: the base point).

    ``mode`` is "full", "probes" or "auto" (full when ``2N + M <= FULL_BUDGET``).
    """
    x = fn.x0 if x is None else x
    if fn.n == 0 or fn.m == 0:
        return Comparison(True, "empty", message="nothing to differentiate")
    f0 = fn.value(x)
    if not bool(torch.isfinite(f0).all()):
        return Comparison(True, "non-finite", message="outputs are not finite here")
    gen = torch.Generator().manual_seed(seed)
    h = step_size(x)
    full = mode == "full" or (mode == "auto" and 2 * fn.n + fn.m <= FULL_BUDGET)
    run = _full if full else _probes
    result, suspects = run(fn, x, f0, h, atol, rtol, gen, n_probes, context)
    if result.mismatches or not result.kinks:
        return result
    if not jitter:  # already just off a kink: kinks here are notes
        result.ok = True
        return result
    # Only kinks (or unclassified entries next to them): check just off them, both sides.
    delta = 1e-3 * (1 + x.abs()) * (0.5 + torch.rand(x.shape, generator=gen, dtype=x.dtype))
    signs = rademacher(fn.n, gen)
    where = torch.zeros_like(x)
    where[suspects if suspects else slice(None)] = 1.0
    for side in (1.0, -1.0):
        moved = x + side * where * signs * delta
        again = compare(
            fn,
            atol=atol,
            rtol=rtol,
            mode="full" if full else "probes",
            n_probes=n_probes,
            seed=seed + 1,
            context=(context + ", " if context else "") + "just off the kink",
            x=moved,
            jitter=False,
        )
        if not again.ok:
            again.kinks = result.kinks + again.kinks
            return again
    result.ok, result.mismatches = True, []
    result.message = f"{len(result.kinks)} non-differentiable point(s); correct just off them"
    return result


def _eps(fn) -> float:
    return max(EPS64, getattr(fn, "out_eps", EPS64))


def _rel(a: torch.Tensor, n: torch.Tensor, floor: float) -> torch.Tensor:
    err = (a - n).abs() / (torch.maximum(a.abs(), n.abs()) + floor)
    return torch.nan_to_num(err, nan=float("inf"))


def _full(fn, x, f0, h, atol, rtol, gen, n_probes, context):
    n, m = fn.n, fn.m
    jn = _numeric_jacobian(fn, x, h)
    eye = torch.eye(m, dtype=torch.float64)
    ja = torch.stack(fn.vjps(x, list(eye)))
    scale = float(jn.abs().max())
    noise = 64 * _eps(fn) * float(f0.abs().max()) / h + 1e-300
    tol = atol * scale + rtol * jn.abs() + noise
    bad = ~((ja - jn).abs() <= tol)
    rel = _rel(ja, jn, atol * scale + noise)
    result = Comparison(True, "full", max_rel_error=float(rel.max()))
    if not bool(bad.any()):
        return result, []
    cols = sorted(set(torch.nonzero(bad)[:, 1].tolist()))
    kink_entries: set[tuple[int, int]] = set()
    suspects: list[int] = []
    for j in cols[:MAX_KINK_COLUMNS]:
        rows = torch.nonzero(bad[:, j]).flatten().tolist()
        kinks = _kink_rows(fn, x, f0, _unit(n, j), h, rows, ja[:, j], tol[:, j])
        kink_entries.update((i, j) for i in kinks)
        if len(kinks) == len(rows):
            result.kinks.append(_kink_label(fn, j, context))
            suspects.append(j)
    unclassified = cols[MAX_KINK_COLUMNS:]
    for i, j in torch.nonzero(bad).tolist():
        if (i, j) not in kink_entries and j not in unclassified:
            result.mismatches.append(_mismatch(fn, j, i, float(ja[i, j]), float(jn[i, j]), context))
    if result.kinks and not result.mismatches and unclassified:
        suspects += unclassified  # too many to classify; the off-kink re-check decides
    result.mismatches.sort(key=lambda mm: -mm.abs_error)
    result.ok = not result.mismatches and not result.kinks
    bad_rel = rel[bad & ~_mask(kink_entries, bad.shape)]
    good_rel = rel[~bad]
    fallback = float(good_rel.max()) if good_rel.numel() else 0.0
    result.max_rel_error = float(bad_rel.max()) if bad_rel.numel() else fallback
    if not result.ok:
        result.message = f"{len(result.mismatches)} of {m * n} Jacobian entries wrong"
    return result, suspects


def _numeric_jacobian(fn, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences, column by column: (M, N), two forwards per input element.

    The step is written into one buffer in place (its version counter bumped as a tensor
    write would), and the columns are divided out together at the end.
    """
    n, m = fn.n, fn.m
    xp = x.detach().clone()
    buf, xs = xp.numpy(), x.tolist()
    sweep = fn.sweep(xp) if hasattr(fn, "sweep") else contextlib.nullcontext(lambda: fn.value(xp))
    bump = torch.autograd.graph.increment_version
    plus, minus = [], []
    with sweep as evaluate:
        for j in range(n):
            buf[j] = xs[j] + h
            bump(xp)
            plus.append(evaluate())
            buf[j] = xs[j] - h
            bump(xp)
            minus.append(evaluate())
            buf[j] = xs[j]
            bump(xp)
    if not n:
        return torch.empty(m, 0, dtype=torch.float64)
    return (torch.stack(plus, dim=1) - torch.stack(minus, dim=1)) / (2 * h)


def _mask(entries: set[tuple[int, int]], shape: torch.Size) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for i, j in entries:
        mask[i, j] = True
    return mask


def _one_sided(fn, x, f0, direction, h):
    """One-sided difference quotients along ``direction`` at steps h and h/10.

    Returns ``[(forward, backward) at h, (forward, backward) at h/10]``. At a smooth point the
    gap ``|forward - backward|`` is ``O(h |f''|)`` and shrinks 10x with the step; at a kink it
    stays. Cost: four forwards.
    """
    out = []
    for step in (h, h / 10):
        fp = fn.value(x + step * direction)
        fm = fn.value(x - step * direction)
        out.append(((fp - f0) / step, (f0 - fm) / step))
    return out


def _mismatch(fn, j, i, a, n_val, context) -> Mismatch:
    name, idx = fn.locate_input(j)
    out_name, out_idx = fn.locate_output(i) if i is not None else ("v . out", None)
    return Mismatch(name, idx, out_name, out_idx, a, n_val, context)


def _probes(fn, x, f0, h, atol, rtol, gen, n_probes, context):
    n, m = fn.n, fn.m
    noise = 64 * _eps(fn) * float(f0.norm()) / h + 1e-300
    result = Comparison(True, "probes")
    worst_tol = 0.0
    for _ in range(n_probes):
        u, v = rademacher(n, gen), rademacher(m, gen)
        g = fn.vjp(x, v)
        floor = atol * float(g.abs().max()) + noise

        def error(mask: torch.Tensor, u=u, v=v, g=g, floor=floor) -> tuple[float, float, float]:
            d = u * mask
            s_n = float(v @ (fn.value(x + h * d) - fn.value(x - h * d))) / (2 * h)
            s_a = float(g @ d)
            return s_a - s_n, floor + (rtol / 100) * abs(s_n), s_n

        ones = torch.ones(n, dtype=torch.float64)
        e_all, tol_all, s_n = error(ones)
        worst_tol = max(worst_tol, tol_all)
        s_a = s_n + e_all
        result.max_rel_error = max(
            result.max_rel_error, abs(e_all) / (max(abs(s_a), abs(s_n)) + floor)
        )
        if abs(e_all) <= tol_all:
            continue
        leaves = _bisect(n, error, e_all)
        explained = False
        for j in leaves:
            kinks, wrong = _classify_leaf(fn, x, f0, j, h, floor, rtol, context)
            if kinks:
                result.kinks.append(_kink_label(fn, j, context))
            result.mismatches += wrong
            explained = explained or bool(kinks or wrong)
        if explained:
            continue
        # No single element carries the disagreement: it appears only when several move
        # together, which a differentiable function cannot do (its difference quotients are
        # additive up to O(h)). Judge the probe direction itself by the same kink rule.
        f1, b1, f2, b2 = (float(v @ q) for pair in _one_sided(fn, x, f0, u, h) for q in pair)
        if _nondifferentiable(f1, b1, f2, b2, s_a, tol_all):
            result.kinks.append("probe direction" + (f" ({context})" if context else ""))
        else:
            result.mismatches.append(Mismatch("probe", (), "v . out", None, s_a, s_n, context))
    result.ok = not result.mismatches and not result.kinks
    result.sensitivity = 2 * worst_tol
    if not result.ok:
        unique = {(m.input, m.input_index, m.output, m.output_index): m for m in result.mismatches}
        result.mismatches = sorted(unique.values(), key=lambda mm: -mm.abs_error)
        result.message = f"probes disagree; {len(result.mismatches)} wrong entries located"
    return result, []  # kinks were found by bisection, maybe not all: re-check everywhere


def _bisect(n, error, e_all) -> list[int]:
    """Input elements where the probe error concentrates (at most MAX_LEAVES)."""
    stack = [(torch.arange(n), e_all)]
    leaves: list[int] = []
    while stack and len(leaves) < MAX_LEAVES:
        idx, e_s = stack.pop()
        if idx.numel() == 1:
            leaves.append(int(idx[0]))
            continue
        half = idx.numel() // 2
        a_idx, b_idx = idx[:half], idx[half:]
        mask = torch.zeros(n, dtype=torch.float64)
        mask[a_idx] = 1.0
        e_a, tol_a, _ = error(mask)
        e_b = e_s - e_a
        mask.zero_()
        mask[b_idx] = 1.0
        tol_b = tol_a  # same noise floor; the rtol term is negligible at this level
        if abs(e_b) > tol_b:
            stack.append((b_idx, e_b))
        if abs(e_a) > tol_a:
            stack.append((a_idx, e_a))
    return leaves


def _nondifferentiable(f1: float, b1: float, f2: float, b2: float, a: float, tol: float) -> bool:
    """Whether one entry sits on a non-differentiable point, given one-sided quotients
    forward/backward at step h (f1, b1) and h/10 (f2, b2) and the analytic value ``a``.

    A kink: the one-sided slopes disagree and keep disagreeing at the smaller step, and ``a``
    lies between them (a valid subgradient; outside them it is a failure). A jump: the central
    quotient does not converge (it grows like 1/h), so no derivative exists at all.
    """
    c1, c2 = (f1 + b1) / 2, (f2 + b2) / 2
    if abs(c2 - c1) > tol and abs(c2) > 5 * abs(c1):
        return True  # a jump (with or without a kink on top): no derivative to compare
    gap1, gap2 = abs(f1 - b1), abs(f2 - b2)
    if gap2 > tol and gap2 > 0.5 * gap1:
        lo, hi = sorted((f2, b2))
        return lo - tol <= a <= hi + tol
    return False


def _unit(n: int, j: int) -> torch.Tensor:
    e = torch.zeros(n, dtype=torch.float64)
    e[j] = 1.0
    return e


def _kink_label(fn, j: int, context: str) -> str:
    name, idx = fn.locate_input(j)
    return f"{name}{list(idx)}" + (f" ({context})" if context else "")


def _kink_rows(fn, x, f0, direction, h, rows, analytic, tol) -> set[int]:
    """The kink rule, for every comparison: which disagreeing output ``rows`` of the column
    along ``direction`` sit on a non-differentiable point (see ``_nondifferentiable``), given
    the analytic column ``analytic`` (M,) and per-entry tolerances ``tol`` (M,) or a float.
    Cost: four forwards (none when ``rows`` is empty)."""
    if not rows:
        return set()
    (f1, b1), (f2, b2) = _one_sided(fn, x, f0, direction, h)
    tols = tol if isinstance(tol, torch.Tensor) else torch.full_like(f0, float(tol))
    return {
        i
        for i in rows
        if _nondifferentiable(
            float(f1[i]),
            float(b1[i]),
            float(f2[i]),
            float(b2[i]),
            float(analytic[i]),
            float(tols[i]),
        )
    }


def _classify_leaf(fn, x, f0, j, h, floor, rtol, context) -> tuple[set[int], list[Mismatch]]:
    """Input element ``j``, where a probe's error concentrated: its disagreeing Jacobian
    entries (located over outputs), split by the kink rule into kink rows and mismatches.
    Both empty when the column agrees entry by entry (the probe's error came from moving
    several elements together)."""
    located = _locate_outputs(fn, x, j, h, floor, rtol, context)
    rows = [i for i, _, _ in located]
    analytic = torch.zeros(fn.m, dtype=torch.float64)
    for i, a, _ in located:
        analytic[i] = a
    kinks = _kink_rows(fn, x, f0, _unit(fn.n, j), h, rows, analytic, floor)
    wrong = [_mismatch(fn, j, i, a, n_val, context) for i, a, n_val in located if i not in kinks]
    return kinks, wrong


def _locate_outputs(fn, x, j, h, floor, rtol, context) -> list[tuple[int, float, float]]:
    """Output elements whose d out_i / d in_j disagrees, as ``(i, analytic, numeric)``:
    the numeric column (2 forwards) against the analytic one (M backwards when M <= 256,
    else bisected backwards). Empty when every entry agrees."""
    col = (fn.value(x + h * _unit(fn.n, j)) - fn.value(x - h * _unit(fn.n, j))) / (2 * h)
    m = fn.m
    if m <= 256:
        ja = torch.stack(fn.vjps(x, list(torch.eye(m, dtype=torch.float64))))[:, j]
        tol = floor + rtol * col.abs()
        bad = torch.nonzero(~((ja - col).abs() <= tol)).flatten().tolist()
        return [(i, float(ja[i]), float(col[i])) for i in bad]
    frontier = [torch.arange(m)]
    found: list[tuple[int, float, float]] = []
    while frontier and len(found) < MAX_LEAVES:
        halves = []
        for idx in frontier:
            if idx.numel() == 1:
                halves.append(idx)
            else:
                halves += [idx[: idx.numel() // 2], idx[idx.numel() // 2 :]]
        ws = []
        for idx in halves:
            w = torch.zeros(m, dtype=torch.float64)
            w[idx] = 1.0
            ws.append(w)
        grads = fn.vjps(x, ws)
        frontier = []
        for idx, w, g in zip(halves, ws, grads):
            a, n_val = float(g[j]), float(w @ col)
            if abs(a - n_val) <= floor + rtol * abs(n_val):
                continue
            if idx.numel() == 1:
                found.append((int(idx[0]), a, n_val))
            else:
                frontier.append(idx)
    return found


def numeric_vjp(fn: FlatFunction, v: torch.Tensor, slot: int, x: torch.Tensor | None = None):
    """(J^T v) restricted to one slot, by central differences (2 forwards per element)."""
    x = fn.x0 if x is None else x
    h = step_size(x)
    start = sum(fn.sizes[:slot])
    out = torch.empty(fn.sizes[slot], dtype=torch.float64)
    xp = x.clone()
    for k in range(fn.sizes[slot]):
        j = start + k
        xp[j] = x[j] + h
        fp = float(v @ fn.value(xp))
        xp[j] = x[j] - h
        fm = float(v @ fn.value(xp))
        xp[j] = x[j]
        out[k] = (fp - fm) / (2 * h)
    return out


def isfinite(x: float) -> bool:
    return math.isfinite(x)
