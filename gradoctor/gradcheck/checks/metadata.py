"""Check 8: dtype, shape and device of every gradient match its input's.

Autograd silently casts a custom Function's returned gradient to the input's dtype and sums
an expanded one down to the input's shape, which hides the bug. So the backward (or vjp) of
every custom Function in the case's graph is wrapped for one run to record what it *returns*,
and compared with the metadata its forward inputs had; the final gradients are checked too.
Cost: two forwards and one backward. The classes are restored afterwards.
"""

from __future__ import annotations

from typing import Any

import torch

from gradoctor.gradcheck.checks.common import CheckContext, guarded
from gradoctor.gradcheck.result import FAIL, PASS, CheckResult

NAME = "gradient metadata"
_MISSING = object()


def _meta(t: Any):
    if isinstance(t, torch.Tensor):
        return (tuple(t.shape), t.dtype, t.device)
    return None


class _Spy:
    """Temporarily wraps forward/setup_context and backward/vjp of Function classes."""

    def __init__(self, classes: list[type]):
        self.classes = classes
        self.saved: list[tuple[type, str, Any]] = []
        self.problems: list[str] = []

    def _patch(self, cls: type, attr: str, wrapper) -> None:
        self.saved.append((cls, attr, cls.__dict__.get(attr, _MISSING)))
        setattr(cls, attr, staticmethod(wrapper))

    def __enter__(self) -> _Spy:
        base = torch.autograd.Function
        for cls in self.classes:
            fwd_attr = "setup_context" if cls.setup_context is not base.setup_context else "forward"
            bwd_attr = "vjp" if cls.vjp is not base.vjp else "backward"
            orig_fwd, orig_bwd = getattr(cls, fwd_attr), getattr(cls, bwd_attr)

            if fwd_attr == "forward":

                def fwd(ctx, *args, _orig=orig_fwd, **kwargs):
                    ctx._gradoctor_meta = [_meta(a) for a in args]
                    return _orig(ctx, *args, **kwargs)
            else:

                def fwd(ctx, inputs, output, _orig=orig_fwd):
                    ctx._gradoctor_meta = [_meta(a) for a in inputs]
                    return _orig(ctx, inputs, output)

            def bwd(ctx, *grads, _orig=orig_bwd, _name=cls.__name__):
                out = _orig(ctx, *grads)
                self._inspect(_name, ctx, out)
                return out

            self._patch(cls, fwd_attr, fwd)
            self._patch(cls, bwd_attr, bwd)
        return self

    def _inspect(self, name: str, ctx: Any, out: Any) -> None:
        metas = getattr(ctx, "_gradoctor_meta", None)
        if metas is None:
            return
        outs = out if isinstance(out, tuple) else (out,)
        for i, (g, m) in enumerate(zip(outs, metas)):
            if g is None or m is None or not isinstance(g, torch.Tensor):
                continue
            shape, dtype, device = m
            got = (tuple(g.shape), g.dtype, g.device)
            for what, want, have in zip(("shape", "dtype", "device"), m, got):
                if want != have:
                    self.problems.append(
                        f"{name}.backward returns gradient {i} with {what} {_fmt(have)}, "
                        f"its input has {_fmt(want)} (autograd repairs it silently)"
                    )

    def __exit__(self, *exc: Any) -> None:
        for cls, attr, value in reversed(self.saved):
            if value is _MISSING:
                delattr(cls, attr)
            else:
                setattr(cls, attr, value)


def _fmt(x: Any) -> str:
    if isinstance(x, tuple):
        return f"[{', '.join(map(str, x))}]"
    return str(x).replace("torch.", "")


def run(ctx: CheckContext) -> list[CheckResult]:
    return guarded(NAME, lambda: [_check(ctx)])


def _check(ctx: CheckContext) -> CheckResult:
    target = ctx.target
    fn = ctx.flat()
    classes = list(ctx.function_classes())
    fn_cls = target.case.fn
    if isinstance(fn_cls, type) and issubclass(fn_cls, torch.autograd.Function):
        classes = list(dict.fromkeys([fn_cls, *classes]))
    v = torch.randn(
        fn.m, generator=torch.Generator().manual_seed(ctx.seed + 19), dtype=torch.float64
    )
    with _Spy(classes) as spy, torch.enable_grad(), target.rng():
        vals = fn.values_at(fn.x0, requires_grad=True)
        outs = fn._kept(target.call(vals))
        grads = fn._grads(outs, vals, v, retain=False)
    problems = list(dict.fromkeys(spy.problems))
    for slot, g, val in zip(target.slots, grads, vals):
        if (g.shape, g.dtype, g.device) != (val.shape, val.dtype, val.device):
            problems.append(f"gradient of {slot.name} has {_fmt(tuple(g.shape))} {g.dtype}")
    if problems:
        return CheckResult(
            NAME, FAIL, problems[0], pattern="gradient metadata mismatch", notes=problems[1:]
        )
    return CheckResult(
        NAME, PASS, f"{len(grads)} gradient(s) match; {len(classes)} custom Function(s) inspected"
    )


__all__ = ["run", "FAIL"]
