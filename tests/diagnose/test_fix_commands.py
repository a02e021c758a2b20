"""``Diagnosis.commands``: the runnable lines of a fix, in ``report.json`` only when there are
some, printed below the triage table exactly as the fix text's lines were before the field."""

import io
import shlex

import torch
import yaml
from rich.console import Console
from rich.text import Text

from gradoctor.diagnose.types import Diagnosis
from gradoctor.memory.oom import oom_diagnosis
from gradoctor.recipe import load_recipe
from gradoctor.report.triage import commands_of, fix_prose, triage_parts
from gradoctor.training.build import build_components
from tests.memory.conftest import memory_recipe

KEYS = ["code", "severity", "modules", "steps", "message", "evidence", "fix"]


def test_commands_are_a_key_only_when_there_are_some():
    prose = Diagnosis(code="dead_units", severity="warning", message="m", fix="lower the lr")
    assert list(prose.to_dict()) == KEYS  # reports of runs without commands are unchanged
    run = Diagnosis(
        code="memory",
        severity="error",
        message="m",
        fix="a; rerun with x",
        commands=["rerun with x"],
    )
    assert list(run.to_dict()) == [*KEYS, "commands"]
    assert run.to_dict()["commands"] == ["rerun with x"]


def _oom(tmp_path, launch=None):
    """The OOM diagnosis of a recipe file with an override (no batch: the generic fix)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(memory_recipe("Stack", **{"model.depth": 4})))
    recipe = load_recipe(path, ["data.batch_size=64"])
    model = build_components(recipe, torch.device("cpu")).model
    exc = torch.OutOfMemoryError("CUDA out of memory.")
    return path, oom_diagnosis(model, recipe, "cpu", exc, step=3, launch=launch)


def test_the_oom_fix_fills_commands_that_run_as_printed(tmp_path):
    path, d = _oom(tmp_path, launch=["--resume", "runs/x y"])
    rerun, measure = d["commands"]
    assert d["fix"].endswith("; ".join(d["commands"]))  # the fix text is complete as before
    words = shlex.split(rerun.removeprefix("rerun with "))
    assert words[:4] == ["gradoctor", "train", str(path), "data.batch_size=64"]
    assert words[-2:] == ["--resume", "runs/x y"] and "data.batch_size=32" in words
    assert shlex.split(measure.removeprefix("measure a plan: ")) == [
        "gradoctor",
        "memory-profile",
        str(path),
        "data.batch_size=64",
    ]


def _render(diagnoses):
    """What ``gradoctor report`` prints for these diagnoses (the triage part), as text."""
    out = io.StringIO()
    console = Console(file=out, width=100)
    for part in triage_parts({"status": "failed", "diagnoses": diagnoses}):
        unwrapped = isinstance(part, Text) and part.no_wrap
        console.print(part, soft_wrap=unwrapped, crop=not unwrapped)
    return out.getvalue()


def test_commands_print_below_the_table_and_old_reports_print_the_same(tmp_path):
    """A report.json written before the field (no ``commands`` key) shows the same lines."""
    _, d = _oom(tmp_path)
    old = {k: v for k, v in d.items() if k != "commands"}
    assert commands_of(old) == d["commands"] and fix_prose(old) == fix_prose(d)
    shown = _render([d])
    assert shown == _render([old])
    assert "the commands below the table" in shown
    for line in d["commands"]:  # each on one line, never wrapped or cut
        assert line in shown.splitlines()


def test_a_command_holding_a_semicolon_is_printed_whole():
    command = "rerun with gradoctor train r.yaml 'output.dir=a; b'"
    d = Diagnosis(
        code="memory",
        severity="error",
        message="out of memory",
        fix=f"use less; {command}",
        commands=[command],
    ).to_dict()
    assert fix_prose(d) == ["use less"]
    assert command in _render([d]).splitlines()


def test_prose_fixes_have_no_commands():
    d = Diagnosis(
        code="loss_divergence", severity="error", message="m", fix="rerun with a lower lr"
    )
    assert commands_of(d.to_dict()) == [] and fix_prose(d.to_dict()) == ["rerun with a lower lr"]
