"""The op-digest recorder inside the training step, in one process: phases, module names,
no perturbation, nothing left behind; and two in-process runs compared."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from gradoctor.recipe import load_recipe
from gradoctor.reproducibility.compare import first_divergence
from gradoctor.reproducibility.recorder import OpDigestRecorder
from gradoctor.reproducibility.worker import recorded_run
from gradoctor.training.build import build_state
from gradoctor.training.step import StepConfig, TrainStep


def _run(recipe: dict, steps: int = 2, record: bool = True):  # noqa: ANN202
    return recorded_run(load_recipe(recipe), steps, record=record)[0]


def test_phases_and_module_names(make_recipe) -> None:  # noqa: ANN001
    stream = _run(make_recipe())
    phases = Counter(r.phase for r in stream.records)
    assert set(phases) == {"init", "data", "forward", "backward", "optimizer"}
    assert phases["init"] == 6  # 3 Linear layers x (weight, bias), once
    assert phases["data"] == 4  # (x, y) per step
    by_module = {(r.phase, r.module, r.short_op) for r in stream.records}
    # forward and backward of each Linear carry its qualified name
    for layer in ("net.0", "net.2", "net.4"):
        assert ("forward", layer, "aten.addmm") in by_module
        assert ("backward", layer, "aten.mm") in by_module
    assert ("forward", "net.1", "aten.gelu") in by_module
    assert ("backward", "net.1", "aten.gelu_backward") in by_module
    assert ("forward", "(loss)", "aten.nll_loss_forward") in by_module
    assert ("backward", "(loss)", "aten.nll_loss_backward") in by_module
    # AdamW (single-tensor on CPU) updates each parameter: named by the parameter's module
    assert ("optimizer", "net.4", "aten.addcdiv_") in by_module
    assert len(stream.step_seconds) == 2


def test_identity_and_checkpointed_modules_keep_the_right_names(tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    recipe = load_recipe(
        {
            "model": {
                "_component_": f"{samples / 'tiny_lm.py'}:TinyLM",
                "dropout": 0.0,
                "vocab_size": 32,
                "seq_len": 16,
                "d_model": 32,
                "n_heads": 2,
                "n_layers": 2,
            },
            "data": {
                "_component_": "gradoctor.data.token_sequences",
                "vocab_size": 32,
                "seq_len": 16,
                "batch_size": 4,
                "n_samples": 32,
            },
            "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
            "train": {"steps": 1, "device": "cpu", "checkpoint": ["Block"]},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    stream = recorded_run(recipe, 1)[0]
    backward = [r for r in stream.records if r.phase == "backward"]
    mms = {r.module for r in backward if r.short_op == "aten.mm"}
    # Dropout(0) returns its input: it must not take the backward of the Linear before it
    assert "blocks.1.mlp.proj" in mms and "blocks.1.mlp.fc" in mms
    assert not any(m.endswith("drop") for m in mms)
    # checkpointed Blocks recompute their forward inside the backward, under their own names
    recomputed = {r.module for r in backward if r.short_op == "aten.native_layer_norm"}
    assert {"blocks.0.ln_1", "blocks.1.ln_2"} <= recomputed


def test_recording_changes_nothing_and_leaves_no_hooks(make_recipe) -> None:  # noqa: ANN001
    recipe = load_recipe(make_recipe())
    results = []
    for record in (False, True):
        state, undo = build_state(recipe, torch.device("cpu"))
        step = TrainStep(state, StepConfig.from_recipe(recipe))
        recorder = OpDigestRecorder(state.model)
        losses = [step.run([recorder] if record else []).loss for _ in range(3)]
        step.close()
        results.append((losses, {k: v.clone() for k, v in state.model.state_dict().items()}))
        for m in state.model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks
        assert not recorder.scope._grad_hooks and not recorder.scope._module_hooks
        undo()
    (plain_losses, plain_state), (rec_losses, rec_state) = results
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, rec_losses))
    assert all(torch.equal(plain_state[k], rec_state[k]) for k in plain_state)


def test_two_healthy_runs_in_one_process_are_identical(make_recipe) -> None:  # noqa: ANN001
    a, b = _run(make_recipe()), _run(make_recipe())
    assert len(a.records) == len(b.records) > 100
    assert first_divergence(a, b) is None


@pytest.mark.parametrize(
    ("model", "phase", "module", "op", "code"),
    [
        ("ClockNoise", "forward", "source", "aten.randn", "generator_state"),
        ("ReseedsGlobalGenerator", "forward", "source.drop", "aten.bernoulli_", "generator_state"),
        ("PythonJitter", "forward", "source", "aten.mul", "python_value"),
        ("NumpyJitter", "forward", "source", None, "external_input"),
        ("StochasticRoundingBackward", "backward", "source", "aten.rand", "generator_state"),
        ("ClockInit", "init", "out", "parameter out.weight", "initial_weights"),
    ],
)
def test_planted_sources_are_localised_in_one_process(
    make_recipe,
    model: str,
    phase: str,
    module: str,
    op: str | None,
    code: str,  # noqa: ANN001
) -> None:
    a, b = _run(make_recipe(model)), _run(make_recipe(model))
    div = first_divergence(a, b)
    assert div is not None and div.kind == "value"
    assert (div.phase, div.module, div.cause_code) == (phase, module, code)
    if op is not None:
        assert div.op == op
    assert div.step == 1 and module in div.cause or phase in ("init",)


def test_control_flow_divergence_is_aligned_not_a_failure(make_recipe) -> None:  # noqa: ANN001
    for _ in range(20):  # a pair whose branches differ (p = 1/2 per step and pair)
        a, b = _run(make_recipe("RandomBranch")), _run(make_recipe("RandomBranch"))
        div = first_divergence(a, b)
        if div is not None:
            break
    assert div is not None
    assert div.cause_code == "control_flow" and div.module == "source"
    assert div.kind in ("missing", "inserted")
    assert {div.op} <= {"aten.relu", "aten.tanh"}
    assert "run 1 ran" in div.evidence["detail"] or "run 2 ran" in div.evidence["detail"]


def test_an_optimizer_that_draws_from_the_clock(make_recipe) -> None:  # noqa: ANN001
    from tests.reproducibility.conftest import PLANTED

    opt = {"_component_": f"{PLANTED}:ClockNoiseSGD", "lr": 0.01}
    a, b = _run(make_recipe(optimizer=opt)), _run(make_recipe(optimizer=opt))
    div = first_divergence(a, b)
    assert div is not None and (div.phase, div.op, div.cause_code) == (
        "optimizer",
        "aten.randn",
        "generator_state",
    )


def test_a_nondeterministic_kernel_with_equal_inputs(make_recipe, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = _run(make_recipe("RacyKernel")), _run(make_recipe("RacyKernel"))
    div = first_divergence(a, b)
    assert div is not None
    assert (div.phase, div.module, div.cause_code) == (
        "forward",
        "source",
        "nondeterministic_kernel",
    )
    assert div.op == "gradoctor_samples.racy_row_sum"
    assert "use_deterministic_algorithms" in div.fix or "deterministic: true" in div.fix


_EDGE_MODELS = '''
import numpy as np
import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self, in_features=20, out_features=4):
        super().__init__()
        self.inp = nn.Linear(in_features, 16)
        self.out = nn.Linear(16, out_features)

    def forward(self, x):
        return self.out(self.source(torch.relu(self.inp(x))))


class GrowsAndFills(_Base):
    """Healthy: a buffer grown with resize_ (uninitialised) and then filled."""

    def source(self, y):
        buf = y.new_zeros(0)
        buf.resize_(y.shape[-1])
        buf.fill_(1.0)
        return y * buf


class NumpyShared(_Base):
    """A tensor sharing a NumPy array rewritten from an unseeded generator between steps."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rng = np.random.default_rng()
        self.array = np.zeros(16, dtype=np.float32)
        self.shared = torch.from_numpy(self.array)

    def source(self, y):
        self.array[:] = self.rng.normal(size=16)  # no version bump: torch cannot see it
        return y + 0.01 * self.shared


class InferenceBuffer(_Base):
    """Healthy: a buffer made under inference_mode (no version counter)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with torch.inference_mode():
            self.scale = torch.ones(16)

    def source(self, y):
        return y + self.scale  # add saves nothing for backward
'''


@pytest.mark.parametrize(
    ("model", "expected"),
    [("GrowsAndFills", None), ("InferenceBuffer", None), ("NumpyShared", "external_input")],
)
def test_edge_cases_of_the_digest_cache(make_recipe, tmp_path: Path, model: str, expected) -> None:  # noqa: ANN001
    path = tmp_path / "edge_models.py"
    path.write_text(_EDGE_MODELS)
    recipe = make_recipe()
    recipe["model"]["_component_"] = f"{path}:{model}"
    a, b = _run(recipe, steps=3), _run(recipe, steps=3)
    div = first_divergence(a, b)
    if expected is None:
        assert div is None, div
    else:
        assert div is not None and div.cause_code == expected and div.module == "(root)"
