"""The OOM diagnosis the training loop attaches to its report, with a fake CUDA OOM on CPU."""

import shlex

import torch
import yaml

from gradoctor.memory.oom import oom_diagnosis
from gradoctor.recipe import load_recipe
from gradoctor.training.batches import compute_loss
from gradoctor.training.build import build_components
from tests.memory.conftest import memory_recipe

KEYS = {"code", "severity", "modules", "steps", "message", "evidence", "fix"}
WITH_COMMANDS = KEYS | {"commands"}  # the rerun / measure lines, also at the end of "fix"
MESSAGE = (
    "CUDA out of memory. Tried to allocate 8.00 KiB. GPU 0 has a total capacity of 40.00 KiB "
    "of which 1.00 KiB is free. Of the allocated memory 36.00 KiB is allocated by PyTorch, and "
    "1.00 KiB is reserved by PyTorch but unallocated"
)


def _fail_in_forward(model, batch, loss_fn):
    """Raise a fake OOM from inside a forward, as the loop would see it."""

    def hook(*_):
        raise torch.OutOfMemoryError(MESSAGE)

    handle = model.blocks[1].register_forward_hook(hook)
    try:
        compute_loss(model, batch, loss_fn)
    except torch.OutOfMemoryError as exc:
        return exc
    finally:
        handle.remove()
    raise AssertionError("no OOM raised")


def _setup(**changes):
    recipe = load_recipe(memory_recipe("Stack", **changes))
    parts = build_components(recipe, torch.device("cpu"))
    batch = next(iter(parts.data))
    return recipe, parts, batch


def test_diagnosis_shape_and_concrete_fix():
    recipe, parts, batch = _setup(**{"model.depth": 4, "data.batch_size": 64})
    exc = _fail_in_forward(parts.model, batch, parts.loss_fn)
    d = oom_diagnosis(parts.model, recipe, "cpu", exc, step=12, batch=batch)
    assert set(d) == WITH_COMMANDS and d["fix"].endswith("; ".join(d["commands"]))
    assert (d["code"], d["severity"], d["steps"]) == ("memory", "error", [12])
    names = {q for q, _ in parts.model.named_modules()}
    assert d["modules"] and set(d["modules"]) <= names
    assert d["message"].startswith("out of memory in forward at step 12")
    assert "." not in d["message"].rstrip(".")[-1:]  # one sentence
    ev = d["evidence"]
    assert ev["tried_to_allocate"] == 8 * 1024 and ev["device_total"] == 40 * 1024
    assert ev["budget"] == 38 * 1024  # usable: free + what PyTorch holds (< 95% of the card)
    assert ev["needed_at_least"] >= 36 * 1024 + 8 * 1024  # held + the failed allocation
    assert ev["parameters"] == sum(p.numel() * 4 for p in parts.model.parameters())
    assert ev["optimizer_state"] == 2 * ev["parameters"]  # AdamW
    assert ev["batch_size"] == 64
    # every Block's tanh output (4 bytes x 64 x 16) is freed by checkpointing it
    assert ev["activations_estimate"] > 0
    assert "data.batch_size=" in d["fix"] and "precision=bf16" in d["fix"]
    assert "train.checkpoint=[" in d["fix"]
    # the printed overrides are accepted by the recipe loader as they stand
    overrides = shlex.split(d["fix"].split("rerun with the overrides ")[1].split(";")[0])
    fixed = load_recipe(memory_recipe("Stack", **{"model.depth": 4}), overrides)
    assert fixed.precision == "bf16" and fixed.train.checkpoint


def test_parameters_alone_over_the_device_get_a_sharding_fix():
    recipe, parts, batch = _setup(**{"model.depth": 4, "data.batch_size": 64})
    exc = _fail_in_forward(parts.model, batch, parts.loss_fn)
    exc.args = (MESSAGE.replace("40.00 KiB", "16.00 KiB"),)
    d = oom_diagnosis(parts.model, recipe, "cpu", exc, step=3, batch=batch)
    assert "alone need" in d["fix"] and "fsdp" in d["fix"]
    assert "train.checkpoint" not in d["fix"] and "data.batch_size" not in d["fix"]


def test_step_found_in_the_traceback_and_never_raises():
    recipe, parts, batch = _setup()

    def step(self_step=None):
        step = 5  # noqa: F841 - read back from the frame, as in Trainer.step
        compute_loss(parts.model, batch, parts.loss_fn)
        raise torch.OutOfMemoryError(MESSAGE)

    try:
        step()
    except torch.OutOfMemoryError as exc:
        d = oom_diagnosis(parts.model, recipe, "cpu", exc)
    assert d["steps"] == [5]
    # no traceback, no batch: the generic fix, still the same shape
    d = oom_diagnosis(parts.model, recipe, "cpu", torch.OutOfMemoryError("boom"))
    assert set(d) == WITH_COMMANDS and d["modules"] == ["Block"]
    assert "data.batch_size=8" in d["fix"]
    # nonsense arguments still give a diagnosis
    d = oom_diagnosis(None, None, "cpu", torch.OutOfMemoryError("boom"))
    assert set(d) == KEYS and d["code"] == "memory"


def test_weights_alone_get_no_bf16_and_the_rerun_repeats_launch_options(tmp_path):
    """Autocast keeps fp32 weights, gradients and optimizer state: bf16 cannot help them. The
    printed command repeats the run's file, overrides and launch options (--resume)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(memory_recipe("Stack", **{"model.depth": 4})))
    recipe = load_recipe(path, ["data.batch_size=64"])
    parts = build_components(recipe, torch.device("cpu"))
    batch = next(iter(parts.data))
    exc = _fail_in_forward(parts.model, batch, parts.loss_fn)
    exc.args = (MESSAGE.replace("40.00 KiB", "16.00 KiB"),)
    launch = ["--resume", "runs/x"]
    d = oom_diagnosis(parts.model, recipe, "cpu", exc, step=3, batch=batch, launch=launch)
    assert "precision=bf16" not in d["fix"] and "bf16 does not help" in d["fix"]
    roomy = MESSAGE.replace("40.00 KiB", "4.00 GiB").replace("1.00 KiB is free", "3.00 GiB is free")
    exc.args = (roomy,)  # the step should have fit: fragmentation
    d = oom_diagnosis(parts.model, recipe, "cpu", exc, step=3, batch=batch, launch=launch)
    rerun = d["fix"].split("rerun with ")[1].split(";")[0]
    assert rerun.startswith("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True gradoctor train")
    words = shlex.split(rerun)
    assert words[3:5] == [str(path), "data.batch_size=64"] and words[-2:] == launch
