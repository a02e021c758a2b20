"""Recipe validation: the documented contract, every problem at once, overrides, round trip.

Expected line numbers are computed from the YAML text the test writes, never hard-coded
against gradoctor's own output.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

import gradoctor
from gradoctor import RecipeError, RecipeProblem
from gradoctor.recipe.validate import build_recipe

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CONTRACT = ASSETS / "contract" / "recipe.yaml"  # a recipe in the README's shape, kept small
CONTRACT_TEXT = CONTRACT.read_text()
README = Path(__file__).resolve().parents[2] / "README.md"
BROKEN_IMPORT = ASSETS / "broken_import"
PACKAGE_DIR = Path(gradoctor.__file__).resolve().parent


def line_of(text: str, needle: str) -> int:
    """1-based number of the one line of ``text`` that contains ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} occurs on lines {hits}"
    return hits[0]


def by_path(exc: RecipeError) -> dict[str, RecipeProblem]:
    paths = [p.path for p in exc.problems]
    assert len(paths) == len(set(paths)), f"duplicate problems: {paths}"
    return {p.path: p for p in exc.problems}


def full_text(problem: RecipeProblem) -> str:
    return f"{problem.message} {problem.hint or ''}"


# ----------------------------------------------------------------------------- the contract


def readme_recipe() -> str:
    """The YAML block of the README's "Recipes" section: the documented recipe, every key."""
    section = README.read_text().split("\n## Recipes\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a.b": value}`` for every non-mapping value (an empty mapping is a leaf too)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_readme_recipe_validates_and_means_what_it_says(tmp_path: Path):
    text = readme_recipe()
    assert text.startswith("# gradoctor train recipe.yaml\nmodel:")  # the block, not another
    (tmp_path / "recipe.yaml").write_text(text)
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    r = gradoctor.validate(tmp_path / "recipe.yaml")
    # Every value the README writes reaches the recipe as written (grad_scaler is kept for fp16).
    resolved = leaves({**r.to_dict(), "grad_scaler": asdict(r.grad_scaler)})
    documented = leaves(yaml.safe_load(text))
    documented.pop("diagnostics.thresholds")  # {}: the defaults, listed under "Diagnoses"
    assert {k: resolved.get(k, "missing") for k in documented} == documented
    # "PyTorch's defaults shown": the grad_scaler block is GradScaler's own signature.
    scaler = yaml.safe_load(text)["grad_scaler"]
    defaults = inspect.signature(torch.amp.GradScaler).parameters
    assert scaler == {key: defaults[key].default for key in scaler}


def test_contract_recipe_validates_into_typed_fields():
    r = gradoctor.validate(CONTRACT)
    assert isinstance(r, gradoctor.Recipe)
    assert (r.model.target, r.model.kwargs) == ("models.py:MLP", {"hidden": 64})
    assert (r.data.target, r.data.kwargs) == ("models.py:make_data", {"batch_size": 32})
    assert r.loss is not None and (r.loss.target, r.loss.kwargs) == (
        "torch.nn.CrossEntropyLoss",
        {},
    )
    assert r.optimizer.target == "torch.optim.AdamW"
    assert r.optimizer.kwargs == {"lr": 1e-3} and isinstance(r.optimizer.kwargs["lr"], float)
    assert r.scheduler is not None
    assert (r.scheduler.target, r.scheduler.kwargs) == (
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        {"T_max": 100},
    )
    assert r.precision == "bf16"
    t = r.train
    assert (t.steps, t.accum_steps, t.clip_grad_norm, t.checkpoint, t.seed, t.device) == (
        200,
        1,
        None,
        [],
        0,
        "auto",
    )
    assert r.diagnostics.every == 10
    assert r.output.dir == "runs/{recipe}"
    # {recipe} is the file's stem; file paths in _component_ start at the recipe's folder.
    assert r.name == "recipe"
    assert r.output_dir() == Path("runs/recipe")
    assert r.base_dir == CONTRACT.parent
    # validate is the same as load_recipe and constructs nothing; the recipe is self-describing.
    assert gradoctor.load_recipe(CONTRACT) == r
    assert r.raw == r.to_dict()


def test_contract_components_are_what_the_recipe_says():
    """The contract's model file itself: MLP(hidden) maps 20 inputs to 4 classes."""
    r = gradoctor.validate(CONTRACT)
    from gradoctor.recipe.components import resolve_target

    model = resolve_target(r.model.target, r.base_dir)(**r.model.kwargs)
    assert isinstance(model, torch.nn.Module)
    assert model(torch.zeros(3, 20)).shape == (3, 4)
    loader = resolve_target(r.data.target, r.base_dir)(**r.data.kwargs)
    x, y = next(iter(loader))
    assert x.shape == (32, 20) and y.dtype == torch.int64 and int(y.max()) < 4
    assert sum(len(b[0]) for b in loader) == 256


# ----------------------------------------------------------------------------- every problem at once

MANY_MISTAKES = """\
model:
  _component_: models.py:MLPP
  hidden: 64
optimizer:
  _component_: torch.optim.AdamW
  lrr: 1.0e-3
optimiser:
  _component_: torch.optim.SGD
precision: fp8
train:
  stpes: 10
  device: gpu
"""


@pytest.fixture
def many_mistakes(tmp_path: Path) -> Path:
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    path = tmp_path / "bad.yaml"
    path.write_text(MANY_MISTAKES)
    return path


def test_every_mistake_in_one_error(many_mistakes: Path):
    text = MANY_MISTAKES
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(many_mistakes)
    exc = info.value
    assert exc.exit_code == 2
    problems = by_path(exc)
    expected_lines = {
        "optimiser": line_of(text, "optimiser:"),
        "train.stpes": line_of(text, "stpes:"),
        "precision": line_of(text, "precision:"),
        "train.device": line_of(text, "device:"),
        "optimizer.lrr": line_of(text, "lrr:"),
        "model._component_": line_of(text, "MLPP"),
        "data": None,  # missing: no line to point at
    }
    assert set(problems) == set(expected_lines)
    for path, line in expected_lines.items():
        assert problems[path].line == line, path

    # did you mean ...
    assert "did you mean 'optimizer'" in full_text(problems["optimiser"])
    assert "did you mean 'steps'" in full_text(problems["train.stpes"])
    assert "did you mean 'lr'" in full_text(problems["optimizer.lrr"])
    assert "did you mean 'MLP'" in full_text(problems["model._component_"])
    # ... and the accepted values
    assert "known keys" in full_text(problems["optimiser"]) and "scheduler" in full_text(
        problems["optimiser"]
    )
    assert "accum_steps" in full_text(problems["train.stpes"])
    for value in ("fp32", "bf16", "fp16"):
        assert value in full_text(problems["precision"])
    assert "'fp8'" in problems["precision"].message
    assert "auto | cpu | cuda | cuda:N" in full_text(problems["train.device"])
    assert "'gpu'" in problems["train.device"].message
    accepted = full_text(problems["optimizer.lrr"])
    assert "accepted" in accepted and all(a in accepted for a in ("lr", "betas", "weight_decay"))
    assert "required" in problems["data"].message

    # The formatted error names the file and every key path with its line.
    message = str(exc)
    assert str(many_mistakes) in message
    assert f"{len(expected_lines)} problem(s)" in message
    for path, line in expected_lines.items():
        assert (f"{path} (line {line})" if line else f"{path}:") in message


def test_dict_recipe_problems_have_no_lines():
    with pytest.raises(RecipeError) as info:
        gradoctor.validate({"model": {"_component_": "torch.nn.Linear"}, "train": {"steps": 0}})
    problems = info.value.problems
    assert sorted(p.path for p in problems) == [
        "data",
        "model",
        "model",
        "optimizer",
        "train.steps",
    ]
    assert all(p.line is None for p in problems)
    # torch.nn.Linear needs in_features and out_features: one problem each, on the block.
    model_messages = sorted(p.message for p in problems if p.path == "model")
    assert "in_features" in model_messages[0] and "out_features" in model_messages[1]
    steps = next(p for p in problems if p.path == "train.steps")
    assert "an integer >= 1" in full_text(steps)


def test_missing_required_kwarg_points_at_its_block(tmp_path: Path):
    text = CONTRACT_TEXT.replace("  T_max: 100\n", "")
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(tmp_path / "r.yaml")
    (problem,) = info.value.problems
    assert problem.path == "scheduler"
    assert problem.line == line_of(text, "scheduler:")
    assert "T_max" in problem.message


# ----------------------------------------------------------------------------- the user's own errors


def test_user_import_error_shows_their_file_line_and_source():
    models = BROKEN_IMPORT / "models.py"
    source = models.read_text()
    bad_line = line_of(source, "undefined_name  #")
    bad_source = source.splitlines()[bad_line - 1].strip()
    recipe_text = (BROKEN_IMPORT / "recipe.yaml").read_text()

    with pytest.raises(RecipeError) as info:
        gradoctor.validate(BROKEN_IMPORT / "recipe.yaml")
    (problem,) = info.value.problems
    assert problem.path == "model._component_"
    assert problem.line == line_of(recipe_text, "models.py:MLP")
    text = str(info.value)
    assert f'File "{models}", line {bad_line}, in <module>' in text
    assert bad_source in text
    assert "NameError" in text and "undefined_name" in text
    # Only the user's frames: nothing from gradoctor's package, importlib or <frozen ...>.
    assert str(PACKAGE_DIR) not in text
    assert "importlib" not in text and "<frozen" not in text
    # The module imported fine up to the bad line (numpy included), so exactly one frame.
    assert text.count('File "') == 1


# ----------------------------------------------------------------------------- overrides


def test_cli_style_overrides_are_typed():
    r = gradoctor.validate(CONTRACT, ["train.steps=7", "optimizer.lr=1e-2", "precision=fp32"])
    assert r.train.steps == 7 and type(r.train.steps) is int
    lr = r.optimizer.kwargs["lr"]
    assert lr == 0.01 and type(lr) is float
    assert r.precision == "fp32"
    # The resolved recipe (what is saved as recipe.yaml) carries the overrides.
    assert r.to_dict()["train"]["steps"] == 7
    assert r.to_dict()["optimizer"]["lr"] == 0.01


def test_override_to_null(tmp_path: Path):
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    path = tmp_path / "clipped.yaml"
    path.write_text(CONTRACT_TEXT.replace("clip_grad_norm: null", "clip_grad_norm: 1"))
    assert gradoctor.validate(path).train.clip_grad_norm == 1.0
    assert gradoctor.validate(path, ["train.clip_grad_norm=null"]).train.clip_grad_norm is None
    assert gradoctor.validate(path, ["train.clip_grad_norm=2.5"]).train.clip_grad_norm == 2.5


def test_override_does_not_touch_the_file_or_the_source_mapping():
    before = CONTRACT.read_text()
    gradoctor.validate(CONTRACT, ["train.steps=3"])
    assert CONTRACT.read_text() == before
    data = {
        "model": {"_component_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
        "data": {"_component_": "gradoctor.data.synthetic_classification"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
    }
    r = gradoctor.load_recipe(data, {"train": {"steps": 3}})
    assert r.train.steps == 3 and "train" not in data


def test_mapping_overrides_nested_dotted_and_double_underscore():
    assert gradoctor.load_recipe(CONTRACT, {"train": {"steps": 3}}).train.steps == 3
    r = gradoctor.load_recipe(CONTRACT, {"train__seed": 5})
    assert r.train.seed == 5 and r.train.steps == 200  # siblings untouched
    r = gradoctor.load_recipe(CONTRACT, {"train.accum_steps": 2, "optimizer": {"lr": 0.5}})
    assert r.train.accum_steps == 2 and r.optimizer.kwargs == {"lr": 0.5}
    assert r.optimizer.target == "torch.optim.AdamW"  # a nested kwarg does not replace the block
    # A mapping override on a loaded Recipe keeps its folder and name.
    base = gradoctor.load_recipe(CONTRACT)
    again = gradoctor.load_recipe(base, {"train": {"steps": 4}})
    assert again.train.steps == 4 and again.base_dir == base.base_dir and again.name == "recipe"
    assert base.train.steps == 200


def test_mapping_override_that_is_invalid_is_reported():
    with pytest.raises(RecipeError) as info:
        gradoctor.load_recipe(CONTRACT, {"train": {"steps": -1}, "diagnostics__every": 0})
    problems = by_path(info.value)
    assert set(problems) == {"train.steps", "diagnostics.every"}
    assert "-1" in problems["train.steps"].message


@pytest.mark.parametrize("bad", ["train.steps", "=5", "  =x"])
def test_malformed_override_string(bad: str):
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(CONTRACT, [bad, "precision=fp9"])
    problems = info.value.problems
    # Reported together with the other problems, in one error.
    assert len(problems) == 2
    malformed = next(p for p in problems if p.path == "")
    assert f"'{bad}'" in malformed.message and "key.sub=value" in malformed.message
    assert any(p.path == "precision" for p in problems)


def test_override_through_a_scalar_is_reported():
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(CONTRACT, ["precision.kind=bf16"])
    (problem,) = info.value.problems
    assert problem.path == "precision" and "not a mapping" in problem.message


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model:\n  _component_: models.py:MLP\n\thidden: 3\ndata: {}\n", "\thidden"),
        ("precision: fp32\ntrain: 2\n  steps: 3\n", "  steps"),
    ],
)
def test_invalid_yaml_reports_its_line(tmp_path: Path, text: str, needle: str):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(path)
    (problem,) = info.value.problems
    assert problem.line == line_of(text, needle)
    assert "not valid YAML" in problem.message
    assert f"(line {problem.line})" in str(info.value)


def test_recipe_that_is_not_a_mapping_or_missing(tmp_path: Path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        gradoctor.validate(tmp_path / "list.yaml")
    with pytest.raises(RecipeError, match="does not exist"):
        gradoctor.validate(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- grad_scaler


def test_grad_scaler_values_are_kept_as_floats():
    r = gradoctor.load_recipe(
        CONTRACT,
        {
            "precision": "fp16",
            "grad_scaler": {
                "init_scale": 1024,
                "growth_factor": 4,
                "backoff_factor": 0.25,
                "growth_interval": 7,
            },
        },
    )
    gs = r.grad_scaler
    assert (gs.init_scale, gs.growth_factor, gs.backoff_factor, gs.growth_interval) == (
        1024.0,
        4.0,
        0.25,
        7,
    )
    assert type(gs.init_scale) is float and type(gs.growth_factor) is float
    # Defaults are PyTorch's own.
    default = gradoctor.load_recipe(CONTRACT, ["precision=fp16"]).grad_scaler
    scaler = torch.amp.GradScaler("cpu")
    assert default.init_scale == scaler.get_scale()
    assert (default.growth_factor, default.backoff_factor, default.growth_interval) == (
        scaler.get_growth_factor(),
        scaler.get_backoff_factor(),
        scaler.get_growth_interval(),
    )


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("init_scale", 0, "> 0"),
        ("init_scale", -2.0, "> 0"),
        ("init_scale", "big", "> 0"),
        ("growth_factor", 1, "> 1"),
        ("growth_factor", 0.5, "> 1"),
        ("backoff_factor", 0, "between 0 and 1"),
        ("backoff_factor", 1, "between 0 and 1"),
        ("backoff_factor", 1.5, "between 0 and 1"),
        ("growth_interval", 0, ">= 1"),
        ("growth_interval", 2.5, ">= 1"),
    ],
)
def test_grad_scaler_invalid_values(tmp_path: Path, key: str, value: object, accepted: str):
    text = CONTRACT_TEXT.replace(
        "precision: bf16", f"precision: fp16\ngrad_scaler:\n  {key}: {value}"
    )
    shutil.copy(CONTRACT.parent / "models.py", tmp_path / "models.py")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as info:
        gradoctor.validate(tmp_path / "r.yaml")
    (problem,) = info.value.problems
    assert problem.path == f"grad_scaler.{key}"
    assert problem.line == line_of(text, f"  {key}:")
    assert accepted in (problem.hint or "")


def test_grad_scaler_unknown_key_and_ignored_outside_fp16():
    with pytest.raises(RecipeError) as info:
        gradoctor.load_recipe(CONTRACT, {"precision": "fp16", "grad_scaler": {"init_scal": 8.0}})
    (problem,) = info.value.problems
    assert problem.path == "grad_scaler.init_scal" and "did you mean 'init_scale'" in (
        problem.hint or ""
    )
    # Accepted (so `precision=bf16` can override an fp16 recipe) and unused: no scaler in bf16.
    recipe = gradoctor.load_recipe(CONTRACT, {"grad_scaler": {"init_scale": 8.0}})
    assert recipe.precision == "bf16" and "grad_scaler" not in recipe.to_dict()


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "precision=fp16",
            "grad_scaler.init_scale=1024",
            "grad_scaler.growth_interval=5",
            "train.clip_grad_norm=2",
        ],
        [
            "train.checkpoint=[net.0]",
            "train.device=cpu",
            "output.dir=elsewhere/{recipe}",
            "diagnostics.every=3",
        ],
    ],
)
def test_to_dict_round_trips_through_build_recipe(overrides: list[str]):
    r = gradoctor.load_recipe(CONTRACT, overrides)
    d = r.to_dict()
    again = build_recipe(d, name=r.name, base_dir=r.base_dir)
    assert again == r
    assert again.to_dict() == d
    # Every default is filled in.
    assert set(d["train"]) >= {
        "steps",
        "accum_steps",
        "clip_grad_norm",
        "checkpoint",
        "seed",
        "device",
    }
    assert ("grad_scaler" in d) == (r.precision == "fp16")


def test_recording_overrides_never_raises():
    """Provenance of a dict override whose value JSON cannot hold (a tensor) is its repr."""
    import torch

    r = gradoctor.load_recipe(CONTRACT, {"train.seed": 3, "loss.weight": torch.tensor([1.0, 2.0])})
    assert r.overrides[0] == "train.seed=3" and r.overrides[1].startswith("loss.weight=tensor(")
