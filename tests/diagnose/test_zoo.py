"""The pathology zoo is diagnosed with the right code and module; healthy samples stay silent."""

import math
from pathlib import Path

import pytest

import gradoctor

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "recipes" / "zoo"

# recipe -> (code that must be present, its severity, the module it must name first, or None)
EXPECTED = {
    "exploding": ("exploding_gradients", {"warning", "error"}, "net.0"),
    "vanishing": ("vanishing_gradients", {"warning"}, "layers.0"),
    "dead_relu": ("dead_units", {"warning", "error"}, "act"),
    "fp16_overflow": ("loss_scale_collapse", {"error"}, "inp"),
    "nan_forward": ("nonfinite_origin", {"error"}, "energy"),
    "nan_backward": ("nonfinite_origin", {"error"}, "bad"),
    "lr_divergence": ("loss_divergence", {"error", "warning"}, None),
    "edge_of_stability": ("edge_of_stability", {"info"}, None),
    "bad_init": ("exploding_activations", {"warning"}, "layers.0"),
    "wide_residual": ("exploding_activations", {"warning"}, "inp"),
}


def _run(path, tmp_path, **overrides):
    return gradoctor.train(path, output={"dir": str(tmp_path / path.stem)}, **overrides)


def test_every_zoo_recipe_is_covered():
    assert {p.stem for p in ZOO.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pathology_is_diagnosed(name, tmp_path):
    code, severities, module = EXPECTED[name]
    result = _run(ZOO / f"{name}.yaml", tmp_path)
    found = [d for d in result.diagnoses if d["code"] == code]
    assert found, f"{name}: expected {code}, got {[d['code'] for d in result.diagnoses]}"
    assert found[0]["severity"] in severities
    if module is not None:
        assert found[0]["modules"][0] == module
    for d in result.diagnoses:  # the report contract
        assert set(d) == {"code", "severity", "modules", "steps", "message", "evidence", "fix"}
        assert d["message"] and d["fix"]


def test_nan_forward_names_the_op_and_input_range(tmp_path):
    result = _run(ZOO / "nan_forward.yaml", tmp_path)
    (origin,) = [d for d in result.diagnoses if d["code"] == "nonfinite_origin"]
    ev = origin["evidence"]
    assert ev["phase"] == "forward" and ev["op"] == "log" and ev["kind"] == "nan"
    assert ev["input_range"]["min"] < 0  # log of a negative number
    assert result.status == "stopped"
    loss = [d for d in result.diagnoses if d["code"] == "nonfinite_loss"][0]
    assert loss["steps"] == [1]


def test_nan_backward_is_found_in_backward_with_a_finite_loss(tmp_path):
    result = _run(ZOO / "nan_backward.yaml", tmp_path)
    (origin,) = [d for d in result.diagnoses if d["code"] == "nonfinite_origin"]
    assert origin["evidence"]["phase"] == "backward"
    assert "BadBackward" in origin["evidence"]["op"]
    assert origin["steps"] == [1]
    assert (
        result.history["loss"][0] != "nan"
    )  # step 1's loss was finite: only its gradients were not


@pytest.mark.parametrize("name", ["bad_init", "wide_residual"])
def test_bad_init_also_gets_bad_initial_loss(name, tmp_path):
    result = _run(ZOO / f"{name}.yaml", tmp_path)
    (d,) = [d for d in result.diagnoses if d["code"] == "bad_initial_loss"]
    assert d["evidence"]["chance"] == pytest.approx(math.log(4), rel=1e-6)
    assert d["evidence"]["ratio"] > 1e3
    (g,) = [d for d in result.diagnoses if d["code"] == "exploding_gradients"]
    assert g["evidence"]["ratio"] > 1e3  # against the parameter norm, from the start


@pytest.mark.parametrize("depth", [12, 24])
def test_a_kaiming_initialised_deep_relu_stack_stays_silent(depth, tmp_path):
    result = _run(
        ZOO / "bad_init.yaml", tmp_path, model={"gain": 1.0, "depth": depth}, optimizer={"lr": 1e-2}
    )
    assert not [d for d in result.diagnoses if d["severity"] != "info"], result.diagnoses


def test_fp16_overflow_model_is_healthy_in_bf16(tmp_path):
    result = _run(ZOO / "fp16_overflow.yaml", tmp_path, precision="bf16")
    assert not [d for d in result.diagnoses if d["severity"] in ("warning", "error")]
    (note,) = [d for d in result.diagnoses if d["code"] == "fp16_headroom"]
    assert note["severity"] == "info" and note["modules"][0] == "inp"


@pytest.mark.parametrize("name, steps", [("mlp", 200), ("cnn", 150), ("tiny_lm", 80)])
def test_healthy_samples_raise_nothing(name, steps, tmp_path):
    result = gradoctor.train(
        ROOT / "recipes" / f"{name}.yaml",
        train={"steps": steps},
        output={"dir": str(tmp_path)},
        diagnostics={"sharpness_every": steps // 2},  # measured, and far below the threshold
    )
    assert [d for d in result.diagnoses if d["severity"] != "info"] == []
    assert len(result.history["sharpness"]) == 2
    assert not [d for d in result.diagnoses if d["code"] == "edge_of_stability"]
