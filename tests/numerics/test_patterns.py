"""Each family of unstable patterns, in several spellings, is found with its code, module,
op and phase; its severity follows the stated thresholds; stable models stay silent."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import gradoctor
from gradoctor.numerics.findings import (
    exp_overflow_point,
    mantissa_bits,
    sigmoid_saturation,
    smallest_subnormal,
)
from tests.numerics.conftest import SAMPLES

sys.path.insert(0, str(SAMPLES))
from unstable_numerics import SPELLINGS  # noqa: E402

# the op that completes each family's pattern, by spelling (default first)
OPS = {
    "naive_softmax": "aten.div",
    "naive_logsumexp": "aten.log",
    "log_of_softmax": "aten.log",
    "log_of_sigmoid": "aten.log",
    "naive_variance": "aten.sub",
    "sqrt_at_zero": "aten.sqrt",
    "unguarded_division": "aten.div",
    "log_of_zero": "aten.log",
    "overflow_risk": "(outputs)",
}
SPECIAL_OPS = {
    ("log_of_sigmoid", "bce"): "aten.binary_cross_entropy",
    ("log_of_sigmoid", "bce_module"): "aten.binary_cross_entropy",
    ("sqrt_at_zero", "pow_half"): "aten.pow",
    ("unguarded_division", "reciprocal"): "aten.reciprocal",
}
CASES = [
    (family, spelling)
    for family, table in SPELLINGS.items()
    if family != "underflow"
    for spelling in [*table, "module", "function"]
    # inside a custom Function the backward is the Function's own: sqrt's inf gradient at 0
    # never happens there, and nothing is reported (tested below)
    if (family, spelling) != ("sqrt_at_zero", "function")
]


def _audit(recipe: dict, **options):  # noqa: ANN202
    return gradoctor.audit(recipe, steps=1, precision_audit=False, **options)


@pytest.mark.parametrize(("family", "spelling"), CASES)
def test_each_family_in_each_spelling(make_recipe, family: str, spelling: str) -> None:  # noqa: ANN001
    target = "fp16" if family == "overflow_risk" else None
    result = _audit(make_recipe("Unstable", family=family, spelling=spelling), precision=target)
    found = [f for f in result.findings if f.code == family]
    assert found, [(f.code, f.module) for f in result.findings]
    first = found[0]
    assert first.module == ("source.inner" if spelling == "module" else "source")
    assert first.op == SPECIAL_OPS.get((family, spelling), OPS[family])
    assert first.phase == "forward" and first.step == 1
    assert first.fix and first.message
    # no other family is claimed for the planted one
    assert {f.code for f in result.findings} <= {family, "overflow_risk", "unguarded_division"}


def test_sqrt_inside_a_custom_function_has_no_autograd_backward(make_recipe) -> None:  # noqa: ANN001
    result = _audit(make_recipe("Unstable", family="sqrt_at_zero", spelling="function"))
    assert not [f for f in result.findings if f.code == "sqrt_at_zero"]


@pytest.mark.parametrize("spelling", ["functional", "method"])
def test_gradient_underflow_in_fp16(make_recipe, spelling: str) -> None:  # noqa: ANN001
    result = _audit(
        make_recipe("Unstable", family="underflow", spelling=spelling), precision="fp16"
    )
    found = {f.module: f for f in result.findings if f.code == "underflow"}
    assert "out" in found and found["out"].phase == "backward"
    f = found["out"]
    assert f.severity == "warning" and f.evidence["share"] > 0.05
    assert f.op == "grad out.weight"


def test_thresholds_are_the_dtypes_own() -> None:
    # independent truth: the points where each dtype actually fails
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        point = exp_overflow_point(dtype)
        assert torch.isfinite(torch.exp(torch.tensor(point - 0.01, dtype=dtype)))
        assert torch.isinf(torch.exp(torch.tensor(point + 0.1, dtype=dtype)))
        sat = sigmoid_saturation(dtype)
        assert torch.sigmoid(torch.tensor(sat + 0.5, dtype=dtype)) == 1
        assert torch.sigmoid(torch.tensor(sat - 1.0, dtype=dtype)) < 1
        tiny = smallest_subnormal(dtype)
        assert torch.tensor(tiny, dtype=dtype) > 0 and torch.tensor(tiny / 2.1, dtype=dtype) == 0
    assert (mantissa_bits(torch.float32), mantissa_bits(torch.bfloat16)) == (24, 8)
    assert math.isclose(exp_overflow_point(torch.float16), 11.09, abs_tol=0.01)


def _one(result, code: str):  # noqa: ANN001, ANN202
    found = [f for f in result.findings if f.code == code]
    assert found, [(f.code, f.severity) for f in result.findings]
    return found[0]


def test_naive_softmax_severity_follows_the_headroom(make_recipe) -> None:  # noqa: ANN001
    info = _one(_audit(make_recipe("Unstable", family="naive_softmax")), "naive_softmax")
    assert info.severity == "info" and info.evidence["headroom"] > 60
    # in fp32 a largest exponent of ~10 is far from 88.7, but past fp16's 11.09 - 4.6
    warn = _one(
        _audit(make_recipe("Unstable", family="naive_softmax", scale=8.0), precision="fp16"),
        "naive_softmax",
    )
    assert warn.severity == "warning" and warn.evidence["max_exponent"] > 11.09 - math.log(100)
    err = _one(
        _audit(make_recipe("Unstable", family="naive_softmax", scale=200.0)), "naive_softmax"
    )
    assert err.severity == "error" and err.evidence["nonfinite_outputs"] > 0


def test_bce_on_saturated_sigmoid_is_an_error_with_zero_gradients(make_recipe) -> None:  # noqa: ANN001
    f = _one(
        _audit(make_recipe("Unstable", family="log_of_sigmoid", spelling="bce", scale=100.0)),
        "log_of_sigmoid",
    )
    assert f.severity == "error" and f.evidence["clamped_elements"] > 0
    assert "gradient is exactly 0" in f.message
    # independent truth: BCE on a saturated sigmoid clamps the log at -100 and its gradient is 0
    x = torch.tensor([40.0], requires_grad=True)
    loss = F.binary_cross_entropy(torch.sigmoid(x), torch.zeros(1))
    loss.backward()
    assert loss.item() == 100.0 and x.grad.item() == 0.0
    quiet = _one(
        _audit(make_recipe("Unstable", family="log_of_sigmoid", spelling="bce")), "log_of_sigmoid"
    )
    assert quiet.severity == "info" and quiet.evidence["clamped_elements"] == 0


def test_naive_variance_loses_everything_in_bf16(make_recipe) -> None:  # noqa: ANN001
    base = make_recipe("Unstable", family="naive_variance", offset=1000.0)
    f32 = _one(_audit(base), "naive_variance")
    assert f32.severity in ("warning", "error") and f32.evidence["lost_bits"] > 12
    bf16 = _one(_audit({**base, "precision": "bf16"}), "naive_variance")
    assert bf16.severity == "error" and bf16.evidence["nonpositive_variances"] > 0
    # independent truth (the study's numbers): mean 1000, std 1
    x = 1000 + torch.randn(4096, generator=torch.Generator().manual_seed(0))
    assert ((x.bfloat16() ** 2).mean() - x.bfloat16().mean() ** 2).item() <= 0.0
    small = _one(_audit(make_recipe("Unstable", family="naive_variance")), "naive_variance")
    assert small.severity == "info"


def test_zero_divisors_and_zero_logs_are_errors(make_recipe) -> None:  # noqa: ANN001
    div = _one(
        _audit(make_recipe("Unstable", family="unguarded_division", scale=0.0)),
        "unguarded_division",
    )
    assert div.severity == "error" and div.evidence["zero_divisors"] > 0
    ok = _one(_audit(make_recipe("Unstable", family="unguarded_division")), "unguarded_division")
    assert ok.severity == "info"
    log = _one(_audit(make_recipe("Unstable", family="log_of_zero")), "log_of_zero")
    assert log.severity == "error" and log.evidence["zeros"] > 0
    gap = _one(
        _audit(make_recipe("Unstable", family="log_of_softmax", scale=500.0)), "log_of_softmax"
    )
    assert gap.severity == "error" and gap.evidence["zero_probabilities"] > 0


STABLE = ["TransformerBlock", "ResNetish", "LSTMClassifier", "StableHeads"]


def _cpu_runs(model: str, precision: str) -> bool:
    if model != "LSTMClassifier" or precision == "fp32":
        return True
    try:  # oneDNN's LSTM has no low-precision kernel on some CPUs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4)(torch.randn(2, 3, 4))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model", STABLE)
def test_stable_models_get_no_warning(make_recipe, model: str, precision: str) -> None:  # noqa: ANN001
    if not _cpu_runs(model, precision):
        pytest.skip("this CPU's oneDNN has no bf16 LSTM kernel (autocast raises in train too)")
    result = gradoctor.audit(make_recipe(model, precision), steps=2)
    assert not result.at_or_above("warning"), [
        (f.code, f.module, f.message) for f in result.findings
    ]
    assert not result.findings  # the stable spellings are not even "info"
    if precision == "bf16":
        assert result.precision is not None and result.precision.keep_fp32 == []


@pytest.mark.parametrize("name", ["mlp", "cnn", "tiny_lm"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_shipped_samples_get_no_finding(name: str, precision: str, tmp_path) -> None:  # noqa: ANN001
    root = SAMPLES.parent / "recipes"
    result = gradoctor.audit(root / f"{name}.yaml", overrides={"precision": precision}, steps=2)
    assert not result.findings, [(f.code, f.module, f.message) for f in result.findings]
