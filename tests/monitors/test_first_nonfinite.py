"""The replay names the first non-finite module, with checkpointing and in-place activations,
leaves nothing behind, and on_nonfinite's three modes do what they say."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import gradoctor
from gradoctor.monitors.first_nonfinite import replay_step

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "recipes" / "zoo"
spec = importlib.util.spec_from_file_location(
    "pathologies_test", ROOT / "sample_models" / "pathologies.py"
)
path_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(path_models)


class SqrtOfNegative(nn.Module):
    def forward(self, x):
        return torch.sqrt(x - 100.0)


class Block(nn.Module):
    def __init__(self, width, bad=False):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU(inplace=True)  # in place on fc's output
        self.bad = SqrtOfNegative() if bad else nn.Identity()

    def forward(self, x):
        return self.bad(self.act(self.fc(x))) + x


class Net(nn.Module):
    def __init__(self, bad_block=2):
        super().__init__()
        self.blocks = nn.ModuleList(Block(8, bad=(i == bad_block)) for i in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _no_hooks(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not p._backward_hooks


def _replay(model, x, y):
    def forward(batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    return replay_step(model, [(x, y)], forward, lambda loss: loss.backward())


@pytest.mark.parametrize("checkpointed", [False, True])
def test_forward_origin_with_inplace_relu_and_checkpointing(checkpointed):
    torch.manual_seed(0)
    model = Net(bad_block=2)
    if checkpointed:
        from gradoctor.training.activation_checkpointing import apply_checkpointing

        undo = apply_checkpointing(model, ["Block"])
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    finding = _replay(model, x, y)
    assert finding.phase == "forward" and finding.module == "blocks.2.bad" and finding.op == "sqrt"
    assert (
        finding.kind == "nan" and finding.input_range["max"] < 0
    )  # all of x - 100 is negative here
    assert finding.propagated_to[0] == "blocks.2"
    _no_hooks(model)
    if checkpointed:
        undo()


def test_backward_origin_in_a_custom_function():
    torch.manual_seed(0)
    model = path_models.NaNInBackward()
    finding = _replay(model, torch.randn(4, 20), torch.randint(0, 4, (4,)))
    assert finding.phase == "backward" and finding.module == "bad"
    assert finding.op == "_BadBackwardBackward" and finding.kind == "nan"
    _no_hooks(model)


def test_bad_batch_is_reported_as_input():
    model = Net(bad_block=99)
    x = torch.randn(4, 8)
    x[1, 3] = float("inf")
    finding = _replay(model, x, torch.randint(0, 3, (4,)))
    assert finding.phase == "input" and finding.input_range["inf"] == 1


def _late_nan_recipe(out_dir, **diagnostics):
    models = ROOT / "tests" / "assets" / "train_models.py"
    return {
        "model": {"_component_": f"{models}:NaNAtStep"},
        "data": {"_component_": f"{models}:fixed_data", "batch_size": 8, "shuffle": True},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.15},
        "train": {"steps": 16, "device": "cpu"},
        "diagnostics": {"every": 4, "snapshot_every": 4, **diagnostics},
        "output": {"dir": str(out_dir)},
    }


def test_nan_late_in_the_run_is_replayed_at_its_own_step(tmp_path):
    result = gradoctor.train(_late_nan_recipe(tmp_path))
    (origin,) = [d for d in result.diagnoses if d["code"] == "nonfinite_origin"]
    assert (
        origin["steps"] == [8]
        and origin["modules"][0] == "gate"
        and origin["evidence"]["op"] == "log"
    )
    assert origin["evidence"]["input_range"]["max"] < 0  # s had just gone negative
    (loss,) = [d for d in result.diagnoses if d["code"] == "nonfinite_loss"]
    assert loss["steps"] == [8] and loss["evidence"]["last_finite_step"] == 7
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7  # resumable from just before the bad step: s after 7 SGD steps
    assert float(state["model"]["s"]) == pytest.approx(1.0 - 7 * 0.15, abs=1e-6)


def test_stop_saves_the_state_just_before_the_bad_step(tmp_path):
    result = gradoctor.train(ZOO / "nan_backward.yaml", output={"dir": str(tmp_path)})
    assert result.status == "stopped"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 0  # the bad step was step 1: the checkpoint holds the state before it
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_skip_drops_bad_updates_and_keeps_training_finite(tmp_path):
    result = gradoctor.train(
        ZOO / "nan_backward.yaml",
        output={"dir": str(tmp_path)},
        diagnostics={"on_nonfinite": "skip"},
    )
    assert result.status == "completed" and result.steps_completed == 30
    assert result.history["dropped_steps"] == [1]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())  # no NaN update applied
    assert result.skipped_steps == list(range(2, 31))  # every later step was bad too, and skipped


def test_continue_keeps_the_users_numerics(tmp_path):
    cont = gradoctor.train(_late_nan_recipe(tmp_path / "c", on_nonfinite="continue"))
    stop = gradoctor.train(_late_nan_recipe(tmp_path / "s"))
    assert cont.status == "completed" and cont.steps_completed == 16
    n = len(stop.history["loss"])
    assert n == 8 and repr(cont.history["loss"][:n]) == repr(
        stop.history["loss"]
    )  # bitwise, NaNs included
    assert all(v != v for v in cont.history["loss"][7:])  # NaN from step 8 on: numerics untouched
    assert len([d for d in cont.diagnoses if d["code"] == "nonfinite_origin"]) == 1  # replayed once
