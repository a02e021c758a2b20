"""report.json reads back, or fails with a message naming the file (never a traceback)."""

import pytest

from gradoctor.errors import UsageError
from gradoctor.sinks.report_json import read_json, write_json_atomic


def test_round_trip(tmp_path):
    write_json_atomic(tmp_path / "report.json", {"a": [1, 2.5, None]})
    assert read_json(tmp_path / "report.json") == {"a": [1, 2.5, None]}


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "not valid JSON"), ('{"a": [1,', "not valid JSON"), ("[1, 2]", "JSON list")],
)
def test_truncated_empty_or_not_an_object(tmp_path, text, says):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_json(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_gradoctor_report_exits_2_on_a_truncated_report(tmp_path):
    from typer.testing import CliRunner

    from gradoctor.cli import app

    (tmp_path / "report.json").write_text('{"steps_completed": 3, "final')
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not valid JSON" in result.output
