"""Tests for the built-in data components (gradoctor.data), the sample models and recipes.

Everything here runs on CPU in a few seconds. The recipe-driven tests build the model and
data exactly as each recipe names them (model by file path relative to the recipe, data by
dotted path, sibling keys as keyword arguments), independently of gradoctor's train loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import gradoctor.data as gd
from gradoctor.data import digits, synthetic_classification, synthetic_regression, token_sequences

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
SAMPLE_MODELS = REPO / "sample_models"

ALL_COMPONENTS = {
    "synthetic_classification": synthetic_classification,
    "synthetic_regression": synthetic_regression,
    "token_sequences": token_sequences,
    "digits": digits,
}


# ----------------------------------------------------------------------------- helpers


def _full(loader: DataLoader):
    """The data set's full tensors, as a tuple."""
    return loader.dataset.tensors


def _epoch(loader: DataLoader) -> list:
    return list(loader)


def _load_file_attr(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"_gd_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _resolve(spec: str, base: Path):
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        return _load_file_attr((base / path).resolve(), name)
    module, attr = spec.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


def _build(section: dict, base: Path, *args):
    kwargs = dict(section)
    return _resolve(kwargs.pop("_component_"), base)(*args, **kwargs)


def _recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


# ----------------------------------------------------------------------------- public API


def test_public_api():
    assert sorted(gd.__all__) == sorted(ALL_COMPONENTS)
    for name, fn in ALL_COMPONENTS.items():
        assert getattr(gd, name) is fn
        assert callable(fn) and fn.__doc__
    # The dotted path a recipe uses resolves to the function, not the same-named module.
    module, attr = "gradoctor.data.digits".rsplit(".", 1)
    assert getattr(importlib.import_module(module), attr) is digits


# ----------------------------------------------------------------------------- shapes


def test_synthetic_classification_shapes():
    loader = synthetic_classification(batch_size=8, n_samples=50, n_features=5, n_classes=3)
    assert isinstance(loader, DataLoader)
    assert loader.num_workers == 0 and loader.drop_last is False
    batch = next(iter(loader))
    assert isinstance(batch, tuple) and len(batch) == 2
    x, y = batch
    assert x.shape == (8, 5) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64
    _, ys = _full(loader)
    assert set(ys.tolist()) == {0, 1, 2}
    assert torch.isfinite(_full(loader)[0]).all()


def test_synthetic_regression_shapes():
    loader = synthetic_regression(batch_size=8, n_samples=50, n_features=6, n_targets=3)
    x, y = next(iter(loader))
    assert x.shape == (8, 6) and x.dtype == torch.float32
    assert y.shape == (8, 3) and y.dtype == torch.float32
    x1, y1 = next(iter(synthetic_regression(batch_size=4)))
    assert x1.shape == (4, 16) and y1.shape == (4, 1)  # targets stay 2-D


def test_token_sequences_shapes_and_shift():
    loader = token_sequences(batch_size=4, seq_len=10, vocab_size=7, n_samples=20)
    batch = next(iter(loader))
    assert isinstance(batch, dict) and set(batch) == {"input_ids", "labels"}
    for key in ("input_ids", "labels"):
        assert batch[key].shape == (4, 10) and batch[key].dtype == torch.int64
    ids, labels = _full(loader)
    assert ids.min() >= 0 and ids.max() < 7 and labels.min() >= 0 and labels.max() < 7
    assert torch.equal(labels[:, :-1], ids[:, 1:])  # labels are the next tokens
    assert (labels != -100).all()


def test_token_sequences_low_entropy():
    """The Markov chain has at most 4 successors per token: the task is learnable."""
    ids, labels = _full(token_sequences(n_samples=256))
    successors = {}
    for a, b in zip(ids.flatten().tolist(), labels.flatten().tolist(), strict=True):
        successors.setdefault(a, set()).add(b)
    assert max(len(s) for s in successors.values()) <= 4


@pytest.mark.parametrize("flatten, shape", [(False, (16, 1, 8, 8)), (True, (16, 64))])
def test_digits_shapes(flatten, shape):
    x, y = next(iter(digits(batch_size=16, flatten=flatten)))
    assert x.shape == shape and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert y.min() >= 0 and y.max() <= 9


@pytest.mark.parametrize("test_fraction", [0.2, 0.5, 0.1])
def test_digits_split_sizes(test_fraction):
    n_train = len(digits(split="train", test_fraction=test_fraction).dataset)
    n_test = len(digits(split="test", test_fraction=test_fraction).dataset)
    assert n_train + n_test == 1797 == sys.modules["gradoctor.data.digits_data"].N_DIGITS
    assert n_test == round(1797 * test_fraction)


def test_digits_split_is_a_partition_and_standardized():
    from sklearn.datasets import load_digits

    train_x, train_y = _full(digits(split="train", flatten=True))
    test_x, test_y = _full(digits(split="test", flatten=True))
    # Labels of the two splits add up to the full data set's label histogram.
    full = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert torch.equal(torch.bincount(train_y, minlength=10) + torch.bincount(test_y), full)
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3
    assert abs(test_x.mean().item()) < 0.1  # same transform, fitted on train only
    # Different seeds give different splits.
    other = _full(digits(split="test", flatten=True, seed=1))[1]
    assert not torch.equal(other, test_y)


def test_digits_missing_sklearn_message(monkeypatch):
    mod = sys.modules["gradoctor.data.digits_data"]
    mod._load_raw.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            digits()
    finally:
        mod._load_raw.cache_clear()


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(ALL_COMPONENTS))
def test_same_seed_bitwise_equal_and_independent_of_global_rng(name):
    fn = ALL_COMPONENTS[name]
    torch.manual_seed(123)
    a = _full(fn(seed=3))
    state = torch.get_rng_state()
    torch.manual_seed(999)  # different global state must not change the data
    b = _full(fn(seed=3))
    assert len(a) == len(b)
    for ta, tb in zip(a, b, strict=True):
        assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    # Building a data set does not consume the global RNG.
    torch.set_rng_state(state)
    fn(seed=3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "name", ["synthetic_classification", "synthetic_regression", "token_sequences"]
)
def test_different_seed_different_data(name):
    fn = ALL_COMPONENTS[name]
    assert not torch.equal(_full(fn(seed=0))[0], _full(fn(seed=1))[0])


def test_shuffle_follows_global_rng():
    loader = synthetic_classification(batch_size=16, n_samples=64)
    assert loader.generator is None  # no private generator: gradoctor checkpoints the global one
    torch.manual_seed(7)
    first = [y.clone() for _, y in loader]
    torch.manual_seed(7)
    again = [y.clone() for _, y in loader]
    torch.manual_seed(8)
    other = [y.clone() for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


# ----------------------------------------------------------------------------- re-iterability


@pytest.mark.parametrize("name", sorted(ALL_COMPONENTS))
def test_reiterable_full_epochs(name):
    loader = ALL_COMPONENTS[name](batch_size=100)
    n = len(loader.dataset)
    assert len(loader) == math.ceil(n / 100)
    for _ in range(2):  # two epochs, each covering the data set exactly once
        batches = _epoch(loader)
        assert len(batches) == len(loader)
        first = batches[0]["input_ids"] if isinstance(batches[0], dict) else batches[0][0]
        last = batches[-1]["input_ids"] if isinstance(batches[-1], dict) else batches[-1][0]
        assert first.shape[0] == 100
        assert last.shape[0] == n - 100 * (len(loader) - 1)  # drop_last=False


def test_unshuffled_epochs_identical_and_ordered():
    loader = synthetic_regression(batch_size=30, n_samples=100, shuffle=False)
    e1, e2 = _epoch(loader), _epoch(loader)
    for (x1, y1), (x2, y2) in zip(e1, e2, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(torch.cat([x for x, _ in e1]), _full(loader)[0])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "fn, kwargs, arg",
    [
        (synthetic_classification, {"batch_size": 0}, "batch_size"),
        (synthetic_classification, {"batch_size": 2.5}, "batch_size"),
        (synthetic_classification, {"batch_size": True}, "batch_size"),
        (synthetic_classification, {"n_classes": 1}, "n_classes"),
        (synthetic_classification, {"n_samples": 0}, "n_samples"),
        (synthetic_classification, {"n_features": -3}, "n_features"),
        (synthetic_classification, {"noise": -0.1}, "noise"),
        (synthetic_classification, {"noise": float("nan")}, "noise"),
        (synthetic_classification, {"seed": -1}, "seed"),
        (synthetic_classification, {"shuffle": "yes"}, "shuffle"),
        (synthetic_regression, {"n_targets": 0}, "n_targets"),
        (synthetic_regression, {"noise": "big"}, "noise"),
        (token_sequences, {"vocab_size": 1}, "vocab_size"),
        (token_sequences, {"seq_len": 0}, "seq_len"),
        (token_sequences, {"batch_size": -16}, "batch_size"),
        (digits, {"split": "val"}, "split"),
        (digits, {"test_fraction": 0.0}, "test_fraction"),
        (digits, {"test_fraction": 1.0}, "test_fraction"),
        (digits, {"test_fraction": 0.0001}, "test_fraction"),
        (digits, {"flatten": 1}, "flatten"),
        (digits, {"batch_size": 0}, "batch_size"),
    ],
)
def test_argument_validation(fn, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        fn(**kwargs)


def test_validation_message_names_accepted_values():
    with pytest.raises(ValueError, match=r"train, test.*'val'"):
        digits(split="val")
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        token_sequences(batch_size=0)


# ----------------------------------------------------------------------------- recipes + models


@pytest.mark.parametrize("name", ["mlp", "cnn", "tiny_lm"])
def test_recipe_first_line_and_model_forward_backward(name):
    text = (RECIPES / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == f"# gradoctor train recipes/{name}.yaml"
    recipe = yaml.safe_load(text)
    torch.manual_seed(0)
    model = _build(recipe["model"], RECIPES)
    loader = _build(recipe["data"], RECIPES)
    batch = next(iter(loader))
    if "loss" in recipe:
        x, y = batch
        loss = _build(recipe["loss"], RECIPES)(model(x), y)
    else:
        assert isinstance(batch, dict)
        loss = model(**batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Names listed in train.checkpoint are module classes that exist in the model.
    classes = {type(m).__name__ for m in model.modules()}
    assert set(recipe["train"].get("checkpoint") or []) <= classes


def test_recipe_specifics():
    assert _recipe("mlp")["precision"] == "fp32"
    cnn = _recipe("cnn")
    assert cnn["precision"] == "bf16" and cnn["train"]["checkpoint"] == ["Block"]
    lm = _recipe("tiny_lm")
    assert "loss" not in lm and lm["precision"] == "fp16"
    assert lm["train"]["accum_steps"] == 2 and lm["train"]["clip_grad_norm"] == 1.0
    assert lm["scheduler"]["_component_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"


def test_cnn_has_no_batchnorm_and_block_class():
    SmallCNN = _load_file_attr(SAMPLE_MODELS / "cnn.py", "SmallCNN")
    model = SmallCNN()
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Block" in kinds
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert model(torch.randn(3, 64)).shape == (3, 10)


def test_tiny_lm_logits_and_length_check():
    TinyLM = _load_file_attr(SAMPLE_MODELS / "tiny_lm.py", "TinyLM")
    model = TinyLM(vocab_size=11, d_model=16, n_layers=1, n_heads=2, seq_len=8)
    ids = torch.randint(0, 11, (2, 8))
    assert model(ids).shape == (2, 8, 11)
    assert model(ids[:, :5]).shape == (2, 5, 11)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.randint(0, 11, (2, 9)))
    # Causality: changing a later token does not change earlier logits.
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 11
    assert torch.allclose(model(ids)[:, :-1], model(ids2)[:, :-1], atol=1e-6)


def test_tiny_lm_scales_to_100m_parameters():
    TinyLM = _load_file_attr(SAMPLE_MODELS / "tiny_lm.py", "TinyLM")
    with torch.device("meta"):  # no memory, no init cost
        model = TinyLM(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, seq_len=512)
    n = sum(p.numel() for p in model.parameters())
    assert 100e6 < n < 120e6


def test_mlp_learns_synthetic_classification():
    """Independent truth: a plain 60-step AdamW loop cuts the full-data-set loss by >= 30%."""
    MLP = _load_file_attr(SAMPLE_MODELS / "mlp.py", "MLP")
    torch.manual_seed(0)
    loader = synthetic_classification(batch_size=32, n_features=20, n_classes=4)
    model = MLP(in_features=20, hidden=64, out_features=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_all, y_all = _full(loader)

    with torch.no_grad():
        start = loss_fn(model(x_all), y_all).item()
    steps = 0
    while steps < 60:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            steps += 1
            if steps == 60:
                break
    with torch.no_grad():
        end = loss_fn(model(x_all), y_all).item()
    assert math.isfinite(start) and math.isfinite(end)
    assert end <= 0.7 * start, (start, end)
