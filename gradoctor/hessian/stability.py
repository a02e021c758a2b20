"""The sharpness an optimizer can take: its stability threshold at the current learning rate.

Pure functions of the optimizer's hyperparameters and state (no model evaluation). On a
quadratic with Hessian H, full-batch steps are stable iff the sharpness is below the threshold:

- SGD, no momentum: λmax(H) < 2/lr;
- SGD, heavy-ball momentum β, dampening τ: λmax(H) < 2(1+β) / (lr(1−τ));
- SGD, Nesterov momentum β (torch's form, τ = 0): λmax(H) < 2(1+β) / (lr(1+2β)) — not
  2(1+β)/lr: solving torch's update θ ← θ − lr(g + β·buf) on a quadratic gives this
  (tests/hessian/test_stability.py runs both sides of it);
- SGD weight_decay wd adds wd·I to the Hessian the optimizer sees, so the threshold on λmax(H)
  of the loss is lowered by wd;
- Adam / AdamW with β1: the preconditioned sharpness λmax(P⁻¹H) < (2+2β1)/((1−β1)·lr)
  (= 38/lr at β1 = 0.9; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
  Stability", arXiv 2207.14484). P is ``adam_preconditioner`` below; measure λmax(P⁻¹H) as
  λmax(D^-1/2 H D^-1/2) with ``hessian_spectrum(..., preconditioner=d)``.

Other optimizers get ``threshold=None`` and a rule saying so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gradoctor.errors import UsageError


@dataclass(frozen=True)
class Stability:
    """``threshold`` (1/lr units, like eigenvalues) for the sharpness named by ``rule``;
    ``preconditioned``: compare it with λmax(P⁻¹H), not λmax(H)."""

    lr: float | None
    threshold: float | None
    rule: str
    preconditioned: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stability_threshold(optimizer: torch.optim.Optimizer, *, lr: float | None = None) -> Stability:
    """The optimizer's full-batch stability threshold at ``lr`` (default: its first param
    group's current lr, i.e. what a scheduler last set)."""
    groups = optimizer.param_groups
    lr = float(groups[0]["lr"] if lr is None else lr)
    name = type(optimizer).__name__
    if lr <= 0:
        return Stability(lr, None, f"no threshold for lr={lr}", False)
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd(groups, lr)
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return _adam(groups, lr, name)
    return Stability(lr, None, f"unknown for {name}", False)


def _differ(groups: list[dict[str, Any]], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if len({repr(g.get(key)) for g in groups}) > 1:
            return key
    return None


def _sgd(groups: list[dict[str, Any]], lr: float) -> Stability:
    key = _differ(groups, ("lr", "momentum", "dampening", "nesterov", "weight_decay"))
    if key:
        return Stability(lr, None, f"SGD param groups differ in {key}: no single threshold", False)
    g = groups[0]
    beta, damp, wd = float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"])
    if beta == 0:
        threshold, rule = 2 / lr, "2/lr (SGD)"
    elif g["nesterov"]:
        threshold = 2 * (1 + beta) / (lr * (1 + 2 * beta))
        rule = f"2(1+β)/((1+2β)·lr) (SGD, Nesterov momentum β={beta:g})"
    else:
        threshold = 2 * (1 + beta) / (lr * (1 - damp))
        rule = f"2(1+β)/lr (SGD, heavy-ball momentum β={beta:g})"
        if damp:
            rule = f"2(1+β)/((1−τ)·lr) (SGD, heavy-ball momentum β={beta:g}, dampening τ={damp:g})"
    if wd:
        threshold -= wd
        rule += f", minus weight_decay {wd:g}"
    return Stability(lr, threshold, rule, False)


def _adam(groups: list[dict[str, Any]], lr: float, name: str) -> Stability:
    betas = {float(g["betas"][0]) for g in groups}
    if len(betas) > 1:
        return Stability(lr, None, f"{name} param groups differ in β1: no single threshold", True)
    beta1 = betas.pop()
    threshold = (2 + 2 * beta1) / ((1 - beta1) * lr)
    rule = f"(2+2β1)/((1−β1)·lr) on λmax(P⁻¹H) ({name}, β1={beta1:g}; Cohen et al. 2022)"
    return Stability(lr, threshold, rule, True)


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, model: nn.Module, *, lr: float | None = None
) -> torch.Tensor:
    """Adam's diagonal preconditioner P as a ``[P]`` float64 vector d, in the order of the
    model's trainable parameters (``hessian_spectrum``'s order).

    torch's Adam step is θ ← θ − lr·m̂/(√v̂ + ε) with m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ), i.e.
    θ ← θ − lr·P⁻¹m with P = (1−β1ᵗ)·diag(√v̂ + ε): Adam is heavy-ball momentum (EMA form) on
    the preconditioned problem, as in Cohen et al. 2022 §2 (arXiv 2207.14484); a public port
    of their measurement builds the same 1/((√(v/(1−β2ᵗ)) + ε)(1−β1ᵗ)). With AMSGrad v is
    ``max_exp_avg_sq``. A param group whose lr differs from ``lr`` (default: the first group's)
    has its entries scaled by lr/lr_group, so one threshold at ``lr`` covers every group.

    Cost: one pass over the optimizer state (P floats). Raises UsageError before the first
    step (no state yet) or for a trainable parameter the optimizer does not hold.
    """
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise UsageError(
            f"adam_preconditioner needs Adam or AdamW, not {type(optimizer).__name__}",
            hint="other optimizers have no preconditioned threshold here",
        )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lr = float(optimizer.param_groups[0]["lr"] if lr is None else lr)
    parts = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group, state = group_of.get(id(p)), optimizer.state.get(p, {})
        if group is None:
            raise UsageError(
                f"parameter '{name}' is trainable but not in the optimizer",
                hint="freeze it (requires_grad_(False)) or add it to the optimizer",
            )
        if "exp_avg_sq" not in state:
            raise UsageError(
                f"the optimizer has no state for '{name}' yet",
                hint="take at least one optimizer step before measuring the preconditioned "
                "sharpness",
            )
        parts.append(_adam_diagonal(state, group, lr))
    return torch.cat(parts)


def _adam_diagonal(state: dict[str, Any], group: dict[str, Any], lr: float) -> torch.Tensor:
    beta1, beta2 = (float(b) for b in group["betas"])
    step = float(state["step"])
    v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    v_hat = v.detach().to("cpu", torch.float64).reshape(-1) / (1 - beta2**step)
    d = (1 - beta1**step) * (v_hat.sqrt() + float(group["eps"]))
    return d * (lr / float(group["lr"]))
