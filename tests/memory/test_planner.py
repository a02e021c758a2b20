"""The checkpoint planner: exact against brute force on crafted instances."""

import itertools
import random

import pytest

from gradoctor.memory.planner import Candidate, min_cost_cover, plan

TREE = ["a", "a.x", "a.y", "b", "b.x", "b.x.p", "b.x.q", "c"]


def _antichain(names):
    return not any(q != o and q.startswith(o + ".") for q in names for o in names)


def _brute_force(cands, need):
    best = None
    for r in range(len(cands) + 1):
        for subset in itertools.combinations(cands, r):
            names = [c.qname for c in subset]
            if _antichain(names) and sum(c.drop for c in subset) >= need:
                cost = sum(c.cost for c in subset)
                best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_min_cost_cover_is_optimal(seed):
    rng = random.Random(seed)
    cands = [Candidate(n, rng.randint(0, 60) * 512, 0, float(rng.randint(1, 40))) for n in TREE]
    need = rng.randint(1, 200) * 512
    chosen = min_cost_cover(cands, need)
    best = _brute_force(cands, need)
    if best is None:
        assert chosen is None
        return
    picked = [c for c in cands if c.qname in chosen]
    assert _antichain(chosen)
    assert sum(c.drop for c in picked) >= need
    assert sum(c.cost for c in picked) == best


def _additive(cands, base):
    by_name = {c.qname: c for c in cands}

    def peak_of(names):
        chosen = [by_name[n] for n in names]
        return base - sum(c.drop for c in chosen) + max((c.spike for c in chosen), default=0)

    return peak_of


def test_plan_fits_with_least_recompute_and_models_the_spike():
    # Checkpointing "big" frees the most but its recomputation spike eats the saving.
    cands = [
        Candidate("big", 600, 590, 10.0),
        Candidate("l1", 300, 50, 3.0),
        Candidate("l2", 300, 50, 3.0),
        Candidate("l3", 300, 50, 4.0),
    ]
    result = plan(cands, _additive(cands, 1000), budget=500)
    assert result.fits and result.peak <= 500
    assert result.modules == ["l1", "l2"]  # 1000 - 600 + 50 = 450: cheapest that fits


def test_plan_without_need_is_empty_and_no_fit_reports_the_lowest():
    cands = [Candidate("a", 100, 10, 1.0), Candidate("b", 100, 10, 1.0)]
    assert plan(cands, _additive(cands, 1000), budget=2000).modules == []
    result = plan(cands, _additive(cands, 1000), budget=10)
    assert not result.fits
    assert result.peak == 1000 - 200 + 10


def test_no_fit_keeps_only_modules_that_lower_the_peak():
    """When nothing fits, a module whose checkpointing does not lower the lowest peak (its
    saving hidden under another's spike, or nothing saved at the peak) is left out: its
    recomputation would be paid for nothing."""
    cands = [Candidate("a", 300, 10, 1.0), Candidate("b", 300, 10, 1.0), Candidate("c", 1, 0, 5.0)]

    def peak_of(names):  # "c" frees a byte that is not alive at the peak
        chosen = [c for c in cands if c.qname in names and c.qname != "c"]
        return 1000 - sum(c.drop for c in chosen) + max((c.spike for c in chosen), default=0)

    result = plan(cands, peak_of, budget=10)
    assert not result.fits
    assert result.modules == ["a", "b"] and result.peak == 410


def test_recipe_lines_read_back_as_the_same_names(tmp_path):
    """Names YAML would read as numbers, floats or booleans (a top-level Sequential's ``0``,
    ``1.10``, ``on``) are quoted, in the YAML lines and in the command-line override."""
    import yaml

    from gradoctor.memory.summary import recipe_lines
    from gradoctor.recipe.load import apply_overrides, safe_load

    names = ["1", "1.10", "1e3", "on", "null", "blocks.0", "Block"]
    yaml_part, override = recipe_lines(names).split("\n# or: gradoctor train RECIPE ")
    assert safe_load(yaml_part)["train"]["checkpoint"] == names
    assert yaml.safe_load(yaml_part)["train"]["checkpoint"] == names
    data: dict = {}
    assert apply_overrides(data, [override.strip("'")])[0] == []
    assert data["train"]["checkpoint"] == names
