"""The discovery contract of a layer file, and its usage errors (exit code 2)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from gradoctor.errors import UsageError
from gradoctor.gradcheck.discovery import discover

from .conftest import ASSETS, CORRECT


def write(tmp_path, text: str, name: str = "layer.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_cases_follow_the_convention(tmp_path):
    (tmp_path / "other.py").write_text(
        "import torch\n"
        "class Imported(torch.nn.Module):\n"
        "    @staticmethod\n"
        "    def example_inputs():\n"
        "        return (torch.randn(2),)\n"
    )
    path = write(
        tmp_path,
        """
        import torch
        import gradoctor
        from other import Imported  # defined elsewhere: not a case

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2
            @staticmethod
            def backward(ctx, g):
                return g * 2
            @classmethod
            def example_inputs(cls):
                return (torch.randn(2, 3),)

        class Mod(torch.nn.Module):
            gradoctor_case = {"batch_mixing": True}
            def forward(self, x, y):
                return x * y
            @staticmethod
            def example_inputs():
                return [torch.randn(2), torch.randn(2)]

        class NoExamples(torch.nn.Module):
            def forward(self, x):
                return x

        class NotStatic(torch.nn.Module):
            def example_inputs(self):  # a plain method: not a case
                return (torch.randn(2),)

        def gradoctor_cases():
            return [gradoctor.Case("fn", torch.sin, (torch.randn(3),))]
        """,
    )
    cases = discover(path)
    assert [c.name for c in cases] == ["Fn", "Mod", "fn"]
    assert cases[0].fn.__name__ == "Fn" and cases[0].inputs[0].shape == (2, 3)
    assert isinstance(cases[1].fn, torch.nn.Module) and cases[1].batch_mixing
    assert len(cases[1].inputs) == 2


def test_case_filter_and_did_you_mean():
    assert [c.name for c in discover(CORRECT, names=["CubeOnce"])] == ["CubeOnce"]
    with pytest.raises(UsageError) as err:
        discover(CORRECT, names=["CubeOnc"])
    assert err.value.exit_code == 2 and "did you mean 'CubeOnce'" in str(err.value)


def test_broken_import_shows_the_users_frame():
    with pytest.raises(UsageError) as err:
        discover(ASSETS / "broken_import.py")
    text = str(err.value)
    assert err.value.exit_code == 2
    assert "broken_import.py" in text and "make_scale" in text and "RuntimeError" in text
    assert "gradoctor/gradcheck" not in text  # only the user's frames


def test_no_cases_is_a_usage_error():
    with pytest.raises(UsageError, match="no cases"):
        discover(ASSETS / "no_cases.py")


def test_example_inputs_that_raise(tmp_path):
    path = write(
        tmp_path,
        """
        import torch
        class Bad(torch.nn.Module):
            def forward(self, x):
                return x
            @staticmethod
            def example_inputs():
                return (torch.randn(2) @ torch.randn(3),)
        """,
    )
    with pytest.raises(UsageError) as err:
        discover(path)
    assert "Bad.example_inputs()" in str(err.value) and "layer.py" in str(err.value)


def test_module_that_needs_arguments(tmp_path):
    path = write(
        tmp_path,
        """
        import torch
        class NeedsArgs(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
            @staticmethod
            def example_inputs():
                return (torch.randn(2),)
        """,
    )
    with pytest.raises(UsageError, match="constructible with no arguments"):
        discover(path)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        discover(tmp_path / "nope.py")
