"""Recipe files that are not YAML text: a folder, non-UTF-8 bytes — clear recipe errors."""

import pytest

from gradoctor import RecipeError
from gradoctor.recipe import load_recipe


def test_a_folder_is_not_a_recipe(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path)
    assert "is a folder, not a recipe file" in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("raw", [b"model: \xff\xfe\n", "model: caf\u00e9\n".encode("latin-1")])
def test_non_utf8_bytes_name_the_byte(tmp_path, raw):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(raw)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "is not UTF-8 text" in str(err.value) and "byte 0x" in str(err.value)


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model:\n  _component_: torch.nn.Linear\n  in_features: 4\n  in_features: 8\n"
        "precision: fp32\nprecision: bf16\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "model.in_features (line 4): given twice (lines 3 and 4)" in text
    assert "precision (line 6): given twice (lines 5 and 6)" in text


@pytest.mark.parametrize("under", ["afile", "afile/sub"])
def test_validate_refuses_an_output_dir_that_is_a_file(tmp_path, under):
    import gradoctor
    from tests.conftest import base_recipe

    (tmp_path / "afile").write_text("x")
    with pytest.raises(RecipeError) as err:
        gradoctor.validate(base_recipe(tmp_path / under))
    assert "output.dir" in str(err.value) and "is a file" in str(err.value)
