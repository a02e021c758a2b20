"""``gradoctor.repro`` and ``gradoctor repro`` end to end: two worker processes per pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app
from gradoctor.errors import UsageError, UserCodeError
from gradoctor.reproducibility.api import _max_abs_diff
from gradoctor.reproducibility.stream import OpStream
from gradoctor.reproducibility.worker import recorded_run
from tests.conftest import ASSETS
from tests.reproducibility.conftest import PLANTED

ASLR = Path("/proc/sys/kernel/randomize_va_space")


def test_a_healthy_recipe_is_reproducible_over_repeated_pairs(make_recipe) -> None:  # noqa: ANN001
    for _ in range(2):  # two independent pairs of processes: no false positive
        result = gradoctor.repro(make_recipe(), steps=2)
        assert result.reproducible and result.first_divergence is None
        assert result.deterministic_mode is None
        assert result.ops[0] == result.ops[1] > 200


def test_an_unseeded_shuffle_is_the_data_phase(make_recipe) -> None:  # noqa: ANN001
    data = {"_component_": f"{PLANTED}:entropy_shuffled"}
    result = gradoctor.repro(make_recipe(data=data), steps=1, deterministic_check=False)
    div = result.first_divergence
    assert not result.reproducible and div is not None
    assert (div.step, div.phase, div.module, div.cause_code) == (1, "data", "(data)", "data")
    assert div.max_abs_diff is not None and div.max_abs_diff > 0


@pytest.mark.skipif(
    ASLR.is_file() and ASLR.read_text().strip() == "0",
    reason="address randomisation is off: uninitialised heap memory is alike in every process",
)
def test_uninitialised_memory_is_found_and_deterministic_mode_fills_it(make_recipe) -> None:  # noqa: ANN001
    for _ in range(3):  # heap leftovers: a pair of processes may, rarely, hold the same bits
        result = gradoctor.repro(
            make_recipe("UninitialisedScale"), steps=2, measure_difference=False
        )
        if not result.reproducible:
            break
    div = result.first_divergence
    assert div is not None and div.phase == "forward" and div.module == "source"
    assert div.cause_code == "uninitialised_memory"
    assert div.evidence["differing_inputs"][0]["origin"] == "uninitialised"
    det = result.deterministic_mode
    assert det is not None and det.reproducible and det.error is None  # filled with NaN
    assert det.time_ratio is not None and det.time_ratio > 0


def test_cli_clock_seeded_noise_exit_3_json_contract(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(make_recipe("ClockNoise")))
    out = tmp_path / "repro.json"
    res = CliRunner().invoke(app, ["repro", str(recipe_path), "--steps", "2", "--json", str(out)])
    assert res.exit_code == 3, res.output
    assert "not reproducible" in res.output and "aten.randn" in res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"reproducible", "steps", "first_divergence", "deterministic_mode"}
    div = data["first_divergence"]
    assert set(div) >= {"step", "phase", "module", "op", "max_abs_diff", "cause", "fix"}
    assert (data["reproducible"], data["steps"]) == (False, 2)
    assert (div["step"], div["phase"], div["module"], div["op"]) == (
        1,
        "forward",
        "source",
        "aten.randn",
    )
    assert div["cause_code"] == "generator_state" and div["max_abs_diff"] > 0
    det = data["deterministic_mode"]
    assert det["reproducible"] is False  # a clock seed is not a kernel choice
    assert det["first_divergence"]["op"] == "aten.randn" and det["time_ratio"] > 0


def test_cli_healthy_exit_0(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(make_recipe()))
    res = CliRunner().invoke(app, ["repro", str(recipe_path), "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert "reproducible" in res.output and "bitwise identical" in res.output


def test_user_code_that_raises_is_exit_1_with_its_frame(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    recipe = make_recipe()
    recipe["model"]["_component_"] = f"{ASSETS / 'broken_forward.py'}:Broken"
    with pytest.raises(UserCodeError) as err:
        gradoctor.repro(recipe, steps=1)
    assert "planted failure" in str(err.value)
    assert "broken_forward.py" in err.value.user_traceback
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["repro", str(recipe_path), "--steps", "1"])
    assert res.exit_code == 1 and "planted failure" in res.output


def test_bad_input_is_exit_2(make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="--steps"):
        gradoctor.repro(make_recipe(), steps=0)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["repro"])
    assert res.exit_code == 2 and "no recipe given" in res.output
    bad = make_recipe()
    bad["train"]["steps"] = "many"
    recipe_path = tmp_path / "bad.yaml"
    recipe_path.write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(app, ["repro", str(recipe_path)])
    assert res.exit_code == 2 and "train.steps" in res.output


def test_stream_round_trip(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    from gradoctor.recipe import load_recipe

    stream = recorded_run(load_recipe(make_recipe()), 1)[0]
    stream.save(tmp_path / "s.pt")
    back = OpStream.load(tmp_path / "s.pt")
    assert back.records == stream.records and back.digests == stream.digests
    assert back.kinds == stream.kinds


def test_max_abs_diff() -> None:
    a = [torch.tensor([1.0, 2.0, float("nan")])]
    assert _max_abs_diff(a, [torch.tensor([1.0, 2.5, float("nan")])]) == 0.5
    assert _max_abs_diff(a, [torch.tensor([1.0, 2.0, 3.0])]) == float("inf")
    assert _max_abs_diff(a, [torch.zeros(2)]) is None
    assert _max_abs_diff(None, a) is None
