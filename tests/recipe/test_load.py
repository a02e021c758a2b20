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
