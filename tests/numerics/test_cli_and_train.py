"""``gradoctor audit`` through the CLI (exit codes, JSON contract) and the first-step audit
inside ``gradoctor train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app
from gradoctor.errors import RecipeError
from tests.conftest import ASSETS

BROKEN = ASSETS / "broken_forward.py"


def _write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_json_contract_and_fail_on(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    path = _write(
        tmp_path,
        make_recipe("Unstable", "bf16", family="log_of_sigmoid", spelling="bce", scale=100.0),
    )
    out = tmp_path / "audit.json"
    res = CliRunner().invoke(app, ["audit", str(path), "--json", str(out), "--fail-on", "error"])
    assert res.exit_code == 3, res.output
    assert "log_of_sigmoid" in res.output and "binary_cross_entropy_with_logits" in res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"findings", "precision", "steps", "recipe"}
    f = data["findings"][0]
    assert set(f) >= {
        "code",
        "severity",
        "module",
        "op",
        "phase",
        "step",
        "message",
        "evidence",
        "fix",
    }
    assert (f["code"], f["severity"], f["module"], f["phase"]) == (
        "log_of_sigmoid",
        "error",
        "source",
        "forward",
    )
    p = data["precision"]
    assert set(p) >= {"reference", "target", "modules", "keep_fp32", "keep_fp32_verified"}
    assert set(p["modules"][0]) >= {
        "name",
        "activation_sqnr_db",
        "grad_sqnr_db",
        "local_activation_sqnr_db",
    }
    assert CliRunner().invoke(app, ["audit", str(path)]).exit_code == 0  # --fail-on never


def test_cli_bad_input(make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    path = _write(tmp_path, make_recipe("StableHeads"))
    res = CliRunner().invoke(app, ["audit", str(path), "--precision", "fp8"])
    assert res.exit_code == 2 and "bf16 or fp16" in res.output
    assert CliRunner().invoke(app, ["audit", str(path), "--steps", "0"]).exit_code == 2
    monkeypatch.chdir(tmp_path / "..")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    res = CliRunner().invoke(app, ["audit"])
    assert res.exit_code == 2 and "no recipe given" in res.output


def test_user_code_that_raises_is_exit_1(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    recipe = make_recipe("StableHeads")
    recipe["model"] = {"_component_": f"{BROKEN}:Broken"}
    res = CliRunner().invoke(app, ["audit", str(_write(tmp_path, recipe))])
    assert res.exit_code == 1 and "planted failure" in res.output
    assert "broken_forward.py" in res.output


def test_a_model_with_no_tensor_ops_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "constant.py"
    model.write_text(
        "import torch\n"
        "class Constant(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(()))\n"
        "    def forward(self, x, y=None):\n"
        "        return self.w\n"  # returns a parameter: no op runs in the forward
    )
    recipe = {
        "model": {"_component_": f"{model}:Constant"},
        "data": {
            "_component_": "gradoctor.data.synthetic_classification",
            "batch_size": 4,
            "n_samples": 16,
        },
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
        "train": {"device": "cpu"},
        "output": {"dir": str(tmp_path / "run")},
    }
    with pytest.raises(gradoctor.UsageError, match="no tensor ops"):
        gradoctor.audit(recipe, steps=1)


def test_train_audits_its_first_step_by_default(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    planted = make_recipe("Unstable", family="log_of_sigmoid", spelling="bce", scale=100.0)
    result = gradoctor.train(planted, train={"steps": 4})
    found = [d for d in result.diagnoses if d["code"] == "log_of_sigmoid"]
    assert found and found[0]["severity"] == "error" and found[0]["modules"] == ["source"]
    assert found[0]["evidence"]["op"] == "aten.binary_cross_entropy"
    assert result.history["numerics"] and result.history["numerics"][0]["step"] == 1
    off = gradoctor.train(planted, train={"steps": 4}, diagnostics={"audit": "off"}, overwrite=True)
    assert not [d for d in off.diagnoses if d["code"] == "log_of_sigmoid"]
    assert off.history["numerics"] == []
    # YAML's bare `off` is false: accepted; anything else names the key
    gradoctor.validate(yaml.safe_load(yaml.safe_dump(planted) + "diagnostics:\n  audit: off\n"))
    with pytest.raises(RecipeError, match="diagnostics.audit"):
        gradoctor.validate({**planted, "diagnostics": {"audit": "always"}})


def test_info_findings_stay_out_of_the_diagnoses(make_recipe) -> None:  # noqa: ANN001
    result = gradoctor.train(make_recipe("Unstable", family="naive_softmax"), train={"steps": 2})
    assert [f["severity"] for f in result.history["numerics"]] == ["info"]
    assert not [d for d in result.diagnoses if d["code"] == "naive_softmax"]
