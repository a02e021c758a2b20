"""Update norms of large parameters come from a fixed sample: close to the exact value, with
bounded memory, and exact for small parameters."""

import pytest
import torch

from gradoctor.monitors import grad_norms
from gradoctor.monitors.grad_norms import GradNormRecorder, ParamIndex


def test_sampled_update_norms_estimate_the_exact_ones(monkeypatch):
    monkeypatch.setattr(grad_norms, "UPDATE_SAMPLE", 4096)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))  # 65536 + small
    index = ParamIndex(model)
    rec = GradNormRecorder(index, torch.device("cpu"))
    before = [p.detach().clone() for p in index.params]
    rec.before_update()
    assert sum(b.numel() for b in rec._before) < 4096 + 256 + 1024 + 4 + 1  # not a model copy
    with torch.no_grad():
        for p in index.params:
            p.add_(torch.randn_like(p) * 1e-3)
    rows = rec.after_update()[:, torch.as_tensor(index.unpermute)]
    for i, (p, b) in enumerate(zip(index.params, before)):
        exact_upd = (p.detach() - b).norm().item()
        exact_par = p.detach().norm().item()
        rel = 0.05 if p.numel() > 4096 else 1e-6  # sampled vs exact
        assert rows[0, i].item() == pytest.approx(exact_upd, rel=rel)
        assert rows[1, i].item() == pytest.approx(exact_par, rel=rel)
    assert rec.after_update() is None  # one measurement per before_update
