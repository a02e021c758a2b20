"""The precision audit: SQNR as defined, the planted sensitive layer ranked first by local
error, its keep-list verified, and the run itself untouched."""

from __future__ import annotations

import math

import pytest
import torch

import gradoctor
from gradoctor.numerics.patterns import PatternDetector
from gradoctor.numerics.precision import PrecisionAudit, PrecisionOptions, _Sqnr
from gradoctor.recipe import load_recipe
from gradoctor.training.batches import to_device
from gradoctor.training.build import build_state
from gradoctor.training.step import StepConfig, TrainStep


def test_sqnr_definition() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1000, generator=g, dtype=torch.float64)
    noise = 1e-3 * torch.randn(1000, generator=g, dtype=torch.float64)
    acc = _Sqnr()
    acc.add(ref, ref + noise)
    expected = 10 * math.log10(float((ref**2).sum()) / float((noise**2).sum()))
    assert acc.db == pytest.approx(expected, rel=1e-12)
    same = _Sqnr()
    same.add(ref, ref.clone())
    assert same.db == math.inf
    assert _Sqnr().db is None
    # bf16 rounding of N(0, 1) values: ~ 6.02 * 8 + 4.8 - (distribution) dB, i.e. 45-55 dB
    rounded = _Sqnr()
    rounded.add(ref, ref.bfloat16().double())
    assert 45 < rounded.db < 56


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_planted_sensitive_layer_is_first_and_its_keep_list_verified(
    make_recipe, precision
) -> None:  # noqa: ANN001
    result = gradoctor.audit(make_recipe("PrecisionSensitive", precision), steps=2)
    p = result.precision
    assert p is not None and p.target == precision and p.reference == "fp32"
    assert p.modules[0].name == "sensitive"  # ranked first by local error
    others = [m.local_activation_sqnr_db for m in p.modules[1:] if m.local_activation_sqnr_db]
    assert p.modules[0].local_activation_sqnr_db < min(others) - 20
    # the layer after it inherits the error but does not cause it
    out = next(m for m in p.modules if m.name == "out")
    assert out.local_activation_sqnr_db > 40 and out.activation_sqnr_db < 20
    assert p.keep_fp32 == ["sensitive"]
    v = p.keep_fp32_verified
    assert v["within_tolerance"] is True and v["runs"] == 1
    assert v["before"]["loss_drift"] > 1e-3 >= v["after"]["loss_drift"]
    assert v["after"]["grad_sqnr_db"] > 20 > v["before"]["grad_sqnr_db"]
    ops = {(o["module"], o["op"]) for o in p.low_precision_ops}
    assert ("sensitive", "aten.sub") in ops


def test_an_fp32_recipe_without_a_target_skips_the_precision_part(make_recipe) -> None:  # noqa: ANN001
    result = gradoctor.audit(make_recipe("PrecisionSensitive"), steps=1)
    assert result.precision is None and any("--precision" in n for n in result.notes)
    with_target = gradoctor.audit(make_recipe("PrecisionSensitive"), steps=1, precision="bf16")
    assert with_target.precision is not None and with_target.precision.keep_fp32 == ["sensitive"]


def test_auditing_changes_nothing_the_run_computes(make_recipe) -> None:  # noqa: ANN001
    """The same losses and weights with the detector and the precision audit as without."""
    recipe = load_recipe(make_recipe("TransformerBlock", "bf16"))
    finals = []
    for audited in (False, True):
        state, undo = build_state(recipe, torch.device("cpu"))
        step = TrainStep(state, StepConfig.from_recipe(recipe))
        det = PatternDetector(state.model, target=torch.bfloat16)
        losses = []
        for _ in range(3):
            if audited:
                batch = state.data.next()
                PrecisionAudit(
                    state.model, state.loss_fn, state.device, PrecisionOptions("bf16")
                ).run(to_device(batch, state.device))
                pending = [batch]
                step.fetch = lambda p=pending: p.pop()  # the step trains on the measured batch
            losses.append(step.run([det] if audited else []).loss)
        step.close()
        det.close()
        for m in state.model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks
        finals.append((losses, {k: v.clone() for k, v in state.model.state_dict().items()}))
        undo()
    (a, sa), (b, sb) = finals
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
