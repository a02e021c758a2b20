"""``gradoctor explain`` end to end on the shipped samples: files, figures, TensorBoard
images, the JSON contract, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app

ROOT = Path(__file__).resolve().parents[2]
CNN = str(ROOT / "recipes" / "cnn.yaml")
LM = str(ROOT / "recipes" / "tiny_lm.yaml")


def _invoke(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, ["explain", *args])


def test_cnn_writes_figures_tensors_json_and_tensorboard(tmp_path: Path) -> None:
    out = tmp_path / "explain"
    res = _invoke(
        CNN,
        "--samples",
        "2",
        "--baseline",
        "mean",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "e.json"),
    )
    assert res.exit_code == 0, res.output
    assert "untrained model" in res.output
    data = json.loads((out / "explain.json").read_text())
    assert data == json.loads((tmp_path / "e.json").read_text())
    assert data["model_source"] == "fresh" and len(data["examples"]) == 2
    for ex in data["examples"]:
        assert set(ex) >= {"index", "target", "prediction", "methods"}
        assert set(ex["methods"]) == {"saliency", "smoothgrad", "ig"}
        ig = ex["methods"]["ig"]
        assert set(ig) >= {"attribution_file", "n_steps", "completeness", "top_features"}
        assert ig["completeness"]["converged"] and ig["completeness"]["relative_error"] <= 0.01
        assert ex["methods"]["saliency"]["completeness"] is None
        png = Image.open(ex["methods"]["ig"]["figure"])
        assert png.size[0] > 300 and png.size[1] > 150
        pixels = np.asarray(png.convert("L"))
        assert pixels.std() > 10  # not a blank image
        import torch

        a = torch.load(ig["attribution_file"])
        assert tuple(a.shape) == (1, 8, 8)
    assert set(data["sanity"]) == {"saliency", "smoothgrad", "ig"}
    assert set(data["faithfulness"]["ig"]) >= {"auc", "random_auc", "ratio"}
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Tags()["images"]) == 6  # 2 examples x 3 methods


def test_tiny_lm_token_scores(tmp_path: Path) -> None:
    out = tmp_path / "lm"
    res = _invoke(LM, "--samples", "2", "--method", "ig", "--no-sanity", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert " t" in res.output  # the coloured tokens
    data = json.loads((out / "explain.json").read_text())
    ex = data["examples"][0]["methods"]["ig"]
    assert len(ex["token_scores"]) == 32  # seq_len of the recipe
    c = ex["completeness"]
    total = sum(t["score"] for t in ex["token_scores"])
    assert abs(total - c["attribution_sum"]) < 1e-4 * max(1.0, abs(total))
    assert Image.open(ex["figure"]).size[0] > 300


def test_trained_checkpoint_and_the_cap_exit_3(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gradoctor.train(CNN, train={"steps": 8}, output={"dir": str(run)})
    res = _invoke(
        CNN,
        "--checkpoint",
        str(run),
        "--samples",
        "2",
        "--method",
        "ig",
        "--no-sanity",
        "--baseline",
        "mean",
        "--out",
        str(tmp_path / "e"),
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "e" / "explain.json").read_text())
    assert data["model_source"] == "checkpoint"
    res = _invoke(
        CNN,
        "--checkpoint",
        str(run),
        "--samples",
        "2",
        "--method",
        "ig",
        "--no-sanity",
        "--tolerance",
        "1e-9",
        "--max-steps",
        "8",
        "--out",
        str(tmp_path / "cap"),
    )
    assert res.exit_code == 3, res.output
    assert "✘ cap" in res.output and "not trustworthy" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "99"], "out of range"),
        (["--method", "gradcam"], "--method"),
        (["--baseline", "black"], "--baseline"),
        (["--target", "first"], "--target"),
    ],
)
def test_bad_input_is_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    res = _invoke(CNN, "--samples", "1", "--no-sanity", "--out", str(tmp_path / "x"), *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_a_jump_along_the_path_is_flagged_stalled(tmp_path: Path) -> None:
    # recipes/cnn.yaml normalises right after its first conv: from a zero baseline the score
    # is constant for every alpha > 0 and different at 0, so no step count converges
    res = _invoke(CNN, "--samples", "1", "--method", "ig", "--no-sanity", "--out", str(tmp_path))
    assert res.exit_code == 3, res.output
    assert "✘ stalled" in res.output and "--baseline mean" in res.output
    data = json.loads((tmp_path / "explain.json").read_text())
    c = data["examples"][0]["methods"]["ig"]["completeness"]
    assert c["stalled"] and not c["converged"] and c["n_steps"] == 64
