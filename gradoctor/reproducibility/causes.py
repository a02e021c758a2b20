"""What each kind of first divergence usually means, and what to do about it.

``CAUSES[code]`` is ``(cause, fix)``; ``{op}`` and ``{module}`` are filled in. The codes are
part of the JSON contract (``first_divergence.cause_code``):

- ``initial_weights``: a parameter or buffer differs before the first step.
- ``data``: a batch tensor differs (nothing of the model has run on it yet).
- ``generator_state``: a random op drew from a generator whose state differs.
- ``python_value``: equal tensor inputs, but a Python number (or shape) passed to the op differs.
- ``uninitialised_memory``: the op read memory an ``empty``-family op left unwritten.
- ``external_input``: the op read a tensor no recorded op produced, and it differs.
- ``nondeterministic_kernel``: equal inputs, arguments and RNG state; the output differs.
- ``control_flow``: the two runs ran different ops here.
"""

from __future__ import annotations

SEEDED = "the recipe's train.seed (gradoctor seeds torch, Python's random and NumPy with it)"

CAUSES: dict[str, tuple[str, str]] = {
    "initial_weights": (
        "the initial weights differ before the first step: {module} initialises from a "
        "generator that is not seeded from the run's seed (a torch.Generator seeded from the "
        "clock, np.random.default_rng() without a seed, or weights loaded from a file that "
        "changes)",
        "initialise from the global generator, which gradoctor seeds with " + SEEDED + ", or "
        "seed your own generator from it",
    ),
    "data": (
        "the batch itself differs: the data pipeline shuffles, samples or augments with its "
        "own unseeded generator (np.random.default_rng(), random.Random(), a "
        "torch.Generator seeded from the clock), or lists files in an unordered way "
        "(os.listdir, iteration over a set)",
        "seed the pipeline's generator from " + SEEDED + " — e.g. "
        "DataLoader(generator=torch.Generator().manual_seed(seed)) and a worker_init_fn — "
        "and sort file lists",
    ),
    "generator_state": (
        "{op} in {module} drew from a random generator whose state differs between the "
        "runs: a generator seeded from the clock or the OS (torch.Generator().manual_seed("
        "time.time_ns()), torch.seed()), or the global generator re-seeded by your code",
        "seed the generator from the run's seed (torch.Generator(device).manual_seed(seed)), "
        "or draw from the global generator, which gradoctor seeds with " + SEEDED,
    ),
    "python_value": (
        "{op} in {module} got equal tensors but a different Python value (a number or a "
        "shape): one drawn from an unseeded source (random.Random(), random.SystemRandom, "
        "np.random.default_rng(), time.time(), os.getpid()) or computed from one",
        "draw it from a generator seeded from " + SEEDED + " (random.Random(seed), "
        "np.random.default_rng(seed)), or from torch's generator",
    ),
    "uninitialised_memory": (
        "{op} in {module} read memory that an empty-family op (torch.empty, empty_like, "
        "new_empty) returned without writing it: its contents are whatever was there before",
        "write every element before reading it, or allocate with torch.zeros / zeros_like; "
        "deterministic mode fills uninitialised memory with NaN "
        "(torch.utils.deterministic.fill_uninitialized_memory), which makes such reads "
        "visible",
    ),
    "external_input": (
        "{op} in {module} read a tensor that no recorded op produced (made from NumPy or "
        "Python data with torch.from_numpy / torch.tensor, kept in a global or a cache "
        "across steps, or changed through .data), and it differs between the runs",
        "build that tensor from seeded sources inside the model (a registered buffer or "
        "parameter), or seed what produces it from " + SEEDED,
    ),
    "nondeterministic_kernel": (
        "{op} in {module} returned different values from bitwise-equal inputs, arguments "
        "and generator state: a nondeterministic kernel (atomic adds whose order varies, "
        "as in index_add_/scatter_add_/index_put_(accumulate=True)/embedding backward on "
        "CUDA, cuDNN algorithm choice, or work split over threads)",
        "turn on deterministic algorithms (recipe: train.deterministic: true, which also "
        "sets CUBLAS_WORKSPACE_CONFIG and cuDNN's flags){alternative}",
    ),
    "control_flow": (
        "the runs executed different ops here: {detail}. The op sequence depends on a value "
        "that differs between the runs (a branch on Python random, NumPy, the clock or a "
        "tensor read with .item()), or on iteration order (a set, os.listdir)",
        "make the branch depend only on seeded values: draw from generators seeded from "
        + SEEDED
        + "; iterate over sorted collections",
    ),
}

# deterministic alternatives for ops known to be nondeterministic on CUDA
ALTERNATIVES: dict[str, str] = {
    "aten.index_add": "index_add_ has a deterministic (sorted) path in deterministic mode",
    "aten.index_add_": "index_add_ has a deterministic (sorted) path in deterministic mode",
    "aten.scatter_add": "scatter_add_ is deterministic in deterministic mode on 1-D inputs; "
    "else sort the indices and use a segment sum",
    "aten.scatter_add_": "scatter_add_ is deterministic in deterministic mode on 1-D inputs; "
    "else sort the indices and use a segment sum",
    "aten.index_put_": "index_put_(accumulate=True) sorts its indices in deterministic mode",
    "aten._index_put_impl_": "index_put_(accumulate=True) sorts its indices in deterministic mode",
    "aten.embedding_dense_backward": "the embedding backward is deterministic in "
    "deterministic mode",
    "aten.scatter_reduce": "sort the indices and reduce segments instead",
    "aten.cumsum": "cumsum is deterministic in deterministic mode",
}


def explain(code: str, op: str, module: str, detail: str = "") -> tuple[str, str]:
    """``(cause, fix)`` for a divergence of ``code`` at ``op`` (``aten.add``) in ``module``."""
    cause, fix = CAUSES[code]
    alternative = ALTERNATIVES.get(op, "")
    return (
        cause.format(op=op, module=module, detail=detail),
        fix.format(alternative=f"; {alternative}" if alternative else ""),
    )


__all__ = ["ALTERNATIVES", "CAUSES", "explain"]
