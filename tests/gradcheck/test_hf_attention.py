"""``gradoctor check-grads`` on Hugging Face attention blocks built from configs, with their
keyword arguments (masks) given through ``gradoctor_cases()`` (sample_models/hf_attention_cases.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradoctor.cli import app

pytest.importorskip("transformers")

CASES = Path(__file__).resolve().parents[2] / "sample_models" / "hf_attention_cases.py"


def test_hf_attention_blocks_pass_every_check_with_their_masks(tmp_path):
    out = tmp_path / "grads.json"
    result = CliRunner().invoke(
        app,
        ["check-grads", str(CASES), "--fast", "--json", str(out)],
        env={"COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cases = report["cases"]
    names = {c["name"] for c in cases}
    assert names == {"BertSelfAttention", "GPT2Attention"}
    for case in cases:
        assert case["status"] == "pass", case["name"]
        checks = {c["name"]: c["status"] for c in case["checks"]}
        assert checks["first order"] == "pass"  # the parameters and the hidden states
        assert checks["batch independence"] == "pass"  # masks broadcast over the batch
