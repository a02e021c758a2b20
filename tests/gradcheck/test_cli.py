"""``gradoctor check-grads`` end to end through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gradoctor.cli import app

from .conftest import ASSETS, BUGGY, CORRECT

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(*args):
    result = CliRunner().invoke(app, ["check-grads", *map(str, args)], env=ENV)
    text = result.output
    try:
        if result.stderr and result.stderr not in text:
            text += result.stderr
    except ValueError:
        pass
    return result.exit_code, text


def test_correct_file_exits_0_with_json(tmp_path):
    out = tmp_path / "r" / "grads.json"
    code, text = invoke(CORRECT, "--case", "ReLUAtZero", "--case", "CubeOnce", "--json", out)
    assert code == 0, text
    assert "all 2 case(s) pass" in text and "once_differentiable" in text
    data = json.loads(out.read_text())
    assert data["status"] == "pass" and [c["name"] for c in data["cases"]] == [
        "ReLUAtZero",
        "CubeOnce",
    ]


def test_buggy_file_exits_1_and_locates(tmp_path):
    out = tmp_path / "grads.json"
    code, text = invoke(BUGGY, "--case", "SquareMatmul", "--case", "OneWrongEntry", "--json", out)
    assert code == 1
    assert "transposed" in text and "d out[17, 33] / d x[17, 33]" in text
    assert "2 of 2 case(s) failed" in text
    data = json.loads(out.read_text())
    one = next(c for c in data["cases"] if c["name"] == "OneWrongEntry")
    first = next(c for c in one["checks"] if c["name"] == "first order")
    assert first["locations"][0]["input_index"] == [17, 33]


def test_broken_import_exits_2_with_user_traceback():
    code, text = invoke(ASSETS / "broken_import.py")
    assert code == 2
    assert "broken_import.py" in text and "make_scale" in text


def test_no_cases_exits_2():
    code, text = invoke(ASSETS / "no_cases.py")
    assert code == 2 and "no cases" in text


def test_unknown_case_exits_2():
    code, text = invoke(CORRECT, "--case", "Nope")
    assert code == 2 and "no case named 'Nope'" in text


def test_fast_mode(tmp_path):
    code, text = invoke(BUGGY, "--case", "DoubledSin", "--fast")
    assert code == 1 and "constant factor" in text


def test_an_unwritable_json_path_is_refused_before_anything_runs(tmp_path):
    """A passing run is never turned into a failure by where its JSON goes: the path is
    checked first (exit 2, no checking done)."""
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile" / "grads.json", tmp_path):
        code, text = invoke(CORRECT, "--case", "CubeOnce", "--json", bad)
        assert code == 2, text
        assert "--json" in text and "CubeOnce" not in text  # refused before any case ran
