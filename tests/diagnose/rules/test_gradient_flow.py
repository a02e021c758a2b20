"""``exploding_gradients`` and ``vanishing_gradients`` (gradoctor/diagnose/rules/gradient_flow.py)."""

import math

import pytest

from gradoctor.diagnose.context import ModuleInfo, RunContext
from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import codes, context, ctx, history


def test_exploding_over_time_and_with_depth():
    growing = [[10 ** (i / 25)] * 3 for i in range(100)]  # 1 -> ~1e4
    d = diagnose(ctx(norms=growing))
    assert [x["code"] for x in d] == ["exploding_gradients"] and d[0]["evidence"]["growth"] > 100
    deep = [[1e4, 10.0, 1.0]] * 100  # the input side gets 1e4x the output side
    (e,) = diagnose(ctx(norms=deep))
    assert e["code"] == "exploding_gradients" and e["modules"][0] == "l0"


def test_vanishing_needs_to_be_sustained():
    vanished = [[1e-6, 1e-2, 1.0]] * 100
    (v,) = diagnose(ctx(norms=vanished))
    assert v["code"] == "vanishing_gradients" and v["modules"][0] == "l0"
    transient = [[1e-6, 1e-2, 1.0]] * 10 + [[1.0, 1.0, 1.0]] * 90  # only at the start
    assert codes(ctx(norms=transient)) == []


def test_nonfinite_norms_are_real_floats_and_skipped_steps_are_left_out():
    """A NaN/inf norm on a skipped (fp16 overflow) step is the scaler's business, not growth."""
    norms = [[1.0, 1.0, 1.0]] * 100
    norms[40] = [math.inf, math.nan, 1.0]
    assert codes(ctx(norms=norms, skipped=[41])) == []


# ---- vanishing is judged along the depth of same-kind stacks ----------------------------
BLOCK = ["attention.self.query", "attention.self.key", "attention.self.value", "output.dense"]


def _stack_ctx(modules: dict[str, tuple[str, float]], n: int = 60) -> RunContext:
    """A run over ``modules`` (name -> (class name, constant gradient RMS)), in that forward
    order, every module with 100 weights (norm = 10 x RMS) on each of ``n`` logged steps."""
    names = list(modules)
    h = history(n=n, norms=[[10.0 * rms for _, rms in modules.values()]] * n)
    h.modules, h.forward_order = names, list(names)
    h.update_ratio = {m: [1e-3] * (n // 10) for m in names}
    c = context(h)
    c.modules = {m: ModuleInfo(m, kind, 100, 2) for m, (kind, _) in modules.items()}
    return c


def _encoder(layers: int, rms_of) -> dict[str, tuple[str, float]]:
    """A BERT-like encoder: ``layers`` blocks of ``BLOCK``, a pooler and a classifier head;
    ``rms_of(layer, part)`` gives each block module's gradient RMS (the head's is 1)."""
    mods = {
        f"encoder.layer.{i}.{part}": ("Linear", rms_of(i, part))
        for i in range(layers)
        for part in BLOCK
    }
    return {**mods, "pooler.dense": ("Linear", 0.1), "classifier": ("Linear", 1.0)}


def _structural(i: int, part: str) -> float:
    """Query/key 1e-5 of the head at every depth (near-uniform attention), the rest 1e-2."""
    return 1e-5 if part.endswith(("query", "key")) else 1e-2


def test_small_attention_query_key_at_every_depth_is_structural():
    for layers in (2, 6):
        c = _stack_ctx(_encoder(layers, _structural))
        assert c.depth_stacks()[0] == [
            f"encoder.layer.{i}.attention.self.query" for i in range(layers)
        ]
        assert "vanishing_gradients" not in codes(c)


def test_small_embedding_like_and_peerless_modules_are_not_compared_with_the_head():
    """A token embedding of a custom class (2-D weight, touched by few tokens per batch), a
    2-D gain of a custom norm and a one-layer model's projections have no same-kind module at
    another depth: small gradients there are no depth-wise loss."""
    mods = {
        "tok_emb": ("TokenEmbedding", 1e-7),
        "norm_in": ("ScaleNorm", 1e-6),
        **_encoder(1, _structural),
    }
    assert "vanishing_gradients" not in codes(_stack_ctx(mods))


def test_depth_wise_loss_is_found_under_structurally_small_modules():
    """Every kind of module loses 10x per layer toward the input (on top of the small
    query/key): the input-side member of each stack is starved against its output-side one."""
    c = _stack_ctx(_encoder(6, lambda i, part: _structural(i, part) * 10.0 ** (i - 5)))
    (v,) = [d for d in diagnose(c) if d["code"] == "vanishing_gradients"]
    assert v["modules"][0].startswith("encoder.layer.0.")
    assert v["evidence"]["relative_rms"]["encoder.layer.0.output.dense"] == pytest.approx(1e-5)
    assert v["evidence"]["relative_rms"]["encoder.layer.5.attention.self.query"] == 1.0
    assert "5 place(s) nearer the output" in v["message"]


def test_a_plain_deep_stack_is_compared_along_its_depth():
    """A 12-layer sigmoid-like stack (x0.25 per layer) and its head: layers.0 is 0.25^11 of
    layers.11; a shallower loss (x0.7 per layer, 2e-2 over the stack) stays silent."""
    for factor, expected in ((0.25, True), (0.7, False)):
        mods = {f"layers.{i}": ("Linear", factor ** (11 - i)) for i in range(12)}
        found = [d for d in diagnose(_stack_ctx({**mods, "head": ("Linear", 5.0)}))]
        vanishing = [d for d in found if d["code"] == "vanishing_gradients"]
        assert bool(vanishing) is expected
        if expected:
            assert vanishing[0]["modules"][0] == "layers.0"
            assert vanishing[0]["evidence"]["compared_with"] == "layers.11"
            assert vanishing[0]["evidence"]["relative_rms"]["layers.0"] == pytest.approx(0.25**11)


def test_a_module_without_any_gradient_is_reported_even_without_peers():
    mods = {
        "frozen_by_mistake": ("Linear", 0.0),
        "hidden": ("Linear", 1e-2),
        "head": ("Linear", 1.0),
    }
    (v,) = [d for d in diagnose(_stack_ctx(mods)) if d["code"] == "vanishing_gradients"]
    assert v["modules"] == ["frozen_by_mistake"]
    assert v["message"] == "'frozen_by_mistake' gets no gradient, unlike the output layer 'head'"
