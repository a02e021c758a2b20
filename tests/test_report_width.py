"""The terminal report at 80 and 120 columns: nothing wider than the terminal, nothing cut
to '…', every diagnosis's fix and every module name shown whole (gradoctor/report)."""

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

import gradoctor
from gradoctor.report.console import render_summary
from gradoctor.report.memory_console import _TOP_MODULES, render_memory_profile

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (80, 120)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _column(text: str, index: int) -> str:
    """One table column's text, read off the drawn lines (cells between '│' borders), so a
    cell wrapped over several lines reads as one string; whitespace removed."""
    cells = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    return _squash("".join(c[index + 1] for c in cells if len(c) > index + 1))


def _check_lines(text: str, width: int) -> None:
    assert "…" not in text, text
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)


def _draw(render, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    render(console)
    return console.export_text()


@pytest.fixture(scope="module")
def bad_init(tmp_path_factory):
    """A run with four diagnoses and long fixes (12 layers, 20 steps)."""
    out = tmp_path_factory.mktemp("bad_init")
    return gradoctor.train(ROOT / "recipes" / "zoo" / "bad_init.yaml", output={"dir": str(out)})


@pytest.fixture(scope="module", params=["cnn.yaml", "tiny_lm.yaml"])
def profile(request):
    return gradoctor.memory_profile(
        ROOT / "recipes" / request.param,
        check=False,
        batch_sizes="4",
        overrides=["data.batch_size=4"],
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_train_report_fits_and_shows_each_fix_whole(bad_init, width):
    data = bad_init.to_dict()
    assert len(data["diagnoses"]) >= 3
    text = _draw(lambda c: render_summary(bad_init, c), width)
    _check_lines(text, width)
    table = "what, evidence, fix" in text
    assert table == (width == 120)  # stacked blocks at 80 columns, a table at 120
    shown = _column(text, 3) if table else _squash(text)
    for d in data["diagnoses"]:
        for part in (d["message"], d["fix"]):
            assert _squash(part) in shown, (d["code"], part)
        assert d["code"] in text
    assert _squash(data["output_dir"]) in _squash(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_memory_profile_fits_and_shows_each_module_whole(profile, width):
    text = _draw(lambda c: render_memory_profile(profile, c), width)
    _check_lines(text, width)
    part = text[text.index("Modules by bytes") : text.index("What if")]
    names = _column(part, 0)
    top = sorted((m for m in profile.modules if m.name), key=lambda m: -m.saved_total)
    for m in top[:_TOP_MODULES]:
        assert _squash(m.name) in names, m.name
        assert m.type in part, m.type
