"""Result dataclasses serialise to the JSON contract."""

from __future__ import annotations

import json

import numpy as np
import torch

from gradoctor.hessian import CurvatureResult, LayerCurvature, Stability, TraceEstimate


def test_optional_parts_serialise_as_none_and_vectors_are_left_out():
    result = CurvatureResult(
        eigenvalues=[np.float64(2.0), 1.0],
        residuals=[1e-9, 1e-8],
        hvps=np.int64(24),
        hvp_method="double-backward",
        fallback=None,
        batches=1,
        parameters=10,
        precision="fp32",
        eigenvectors=torch.zeros(10, 2),
    )
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["eigenvalues"] == [2.0, 1.0] and d["hvps"] == 24
    assert d["trace"] is d["density"] is d["per_layer"] is d["stability"] is None
    assert "eigenvectors" not in d and d["notes"] == []


def test_filled_parts_serialise():
    result = CurvatureResult(
        [1.0], [0.0], 5, "double-backward", None, 1, 3, "fp64",
        trace=TraceEstimate(3.0, 0.1, 34, "hutch++", hvps=100),
        per_layer={"fc": LayerCurvature(1.0, 2.0, 3, trace_stderr=0.5)},
        stability=Stability(0.1, 20.0, "2/lr (SGD)", False),
    )  # fmt: skip
    d = result.to_dict()
    assert d["trace"] == {"estimate": 3.0, "stderr": 0.1, "samples": 34, "method": "hutch++"}
    assert d["per_layer"] == {"fc": {"eigenvalue": 1.0, "trace": 2.0, "params": 3}}
    assert d["stability"] == {
        "lr": 0.1, "threshold": 20.0, "rule": "2/lr (SGD)", "preconditioned": False
    }  # fmt: skip
    result.stability = {"sharpness_ratio": 0.5}  # a caller's own dict passes through
    assert result.to_dict()["stability"] == {"sharpness_ratio": 0.5}
