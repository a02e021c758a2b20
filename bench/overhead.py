"""Overhead of gradoctor's instruments: the same model, data and precision trained by a plain
PyTorch loop and by gradoctor's Trainer (default instruments), interleaved in one process.

    python bench/overhead.py                 # CPU: the shipped MLP / CNN / tiny LM recipes
    python bench/overhead.py --gpu           # CUDA: ~110M-param transformer bf16, ResNet-50 fp16
    python bench/overhead.py --instruments mlp          # what each instrument costs
    python bench/overhead.py --whole                    # the whole gradoctor.train() call
    python bench/overhead.py --base /tmp/base --configs mlp   # before/after, against another tree

Each round runs ``--block`` steps of the plain loop, then ``--block`` steps of gradoctor (the
order alternates per round), timing each block (with a device sync at the block's end on CUDA).
gradoctor is stepped as ``Trainer.run`` steps it: at each log interval the flush (its one host
sync) and the guard's snapshot check. The block is a multiple of the log interval, so each
gradoctor block pays its flushes. Prints per config: ms/step of both, and the ratio
gradoctor/plain as the median over rounds with its min..max spread. Goal: <= 1.05 on CPU,
<= 1.03 on the GPU configs. ``--ablate CONFIG`` repeats that for diagnostics overrides.

``--instruments CONFIG``: the default Trainer against the same Trainer with one instrument
removed from ``trainer.instruments`` (one row per instrument), plus ``snapshot`` (default vs
``diagnostics.snapshot_every`` huge) and ``interval flush`` (``diagnostics.every`` 10 vs 1000,
both without snapshots; the update ratio, measured once per interval, goes with it). Per
round, each comparison (and default vs plain) runs as two back-to-back blocks, order
alternating, the comparisons rotated from round to round; a row's cost is (time with - time
without) / the round's plain-loop time, in %, median [min..max] over rounds. Default block
100 steps: every block then holds the same number of histogram, memory, activation and
snapshot steps. An instrument whose removal breaks the loop (``grad_norms`` without clipping:
the interval's flush stacks per-step norms) is reported so, and timed alone instead: its work
(``trainer.norms.record()`` on the model's gradients) per call / the plain step.

``--whole``: wall time of the whole ``gradoctor.train(...)`` call (recipe check, setup, 150
steps, final flush, diagnoses, report.json, checkpoint, TensorBoard close) of a 9-layer
256-wide MLP (fp32 AdamW, recipes/mlp.yaml's data) against a plain loop doing its own
seeding, model/optimizer/data construction and the same 150 steps; per round both in
alternating order, after one untimed warm-up call of each (imports, first-call caches).
Also with ``diagnostics.every: 50`` and with histograms and activations off. Default 5 rounds.

``--base DIR``: the ``--whole`` rows and the per-step rows of the CPU configs (``--configs``),
for this tree and for the tree at DIR (e.g. a checkout of an older commit), side by side. Each
round runs one subprocess per tree, ``PYTHONPATH=<tree> python bench/overhead_tree.py``
(which tree was imported is checked from ``gradoctor.__file__`` and printed), alternating
which tree goes first. Per-step rows: ``--pairs`` interleaved block pairs per round and tree.

``--threads N`` sets ``torch.set_num_threads`` (also in the subprocesses): on a busy CPU,
1 thread times far more steadily than the default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead_tree import (  # noqa: E402
    WHOLE_STEPS,
    WHOLE_VARIANTS,
    DoctorLoop,
    PlainLoop,
    compute_loss,
    time_block,
    to_device,
    whole_round,
    whole_warmup,
)
from gradoctor.devices import pick_device  # noqa: E402
from gradoctor.recipe import load_recipe  # noqa: E402

SM = ROOT / "sample_models"
BENCH = ROOT / "bench"
CPU_CONFIGS = {name: ROOT / "recipes" / f"{name}.yaml" for name in ("mlp", "cnn", "tiny_lm")}
GPU_CONFIGS = {
    "gpt110m-bf16": {
        "model": {
            "_component_": f"{SM}/tiny_lm.py:TinyLM",
            "vocab_size": 32000,
            "d_model": 768,
            "n_layers": 12,
            "n_heads": 12,
            "seq_len": 512,
        },
        "data": {"_component_": f"{BENCH}/components.py:tokens", "batch_size": 16, "seq_len": 512},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-4, "fused": True},
        "precision": "bf16",
        "train": {"clip_grad_norm": 1.0},
    },
    "resnet50-fp16": {
        "model": {"_component_": f"{BENCH}/components.py:resnet50"},
        "data": {"_component_": f"{BENCH}/components.py:images", "batch_size": 128},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
        "precision": "fp16",
    },
}


__all__ = ["CPU_CONFIGS", "GPU_CONFIGS", "DoctorLoop", "PlainLoop"]  # PlainLoop: ddp_overhead.py

ABLATIONS = {  # what each instrument costs: the default run without it (diagnostics overrides)
    "default": {},
    "no-snapshot": {"snapshot_every": 10**9},
    "no-activations": {"activation_every": 0},
    "no-histograms": {"histogram_every": 0},
    "every-50": {"every": 50},
}


def _load(name, recipe_src, device_name, out_dir, diagnostics=None):
    """The recipe for the benchmark: endless steps, its own output folder."""
    overrides = {
        "train": {"steps": 10**9, "device": device_name},
        "output": {"dir": str(out_dir / name)},
    }
    if diagnostics:
        overrides["diagnostics"] = diagnostics
    recipe = load_recipe(recipe_src, overrides)
    device = pick_device(recipe.train.device)
    if isinstance(recipe_src, dict):
        for comp in (recipe.data,):
            if "device" in comp.kwargs or comp.target.endswith((":tokens", ":images")):
                comp.kwargs["device"] = str(device)
    return recipe, device


def _device_label(device):
    return str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)


def bench_config(name, recipe_src, rounds, block, warmup, device_name, out_dir, diagnostics=None):
    recipe, device = _load(name, recipe_src, device_name, out_dir, diagnostics)
    plain, doctor = PlainLoop(recipe, device), DoctorLoop(recipe)
    for loop in (plain, doctor):
        time_block(loop, warmup, device)
    ratios, t_plain, t_doc = [], [], []
    for r in range(rounds):
        order = (plain, doctor) if r % 2 == 0 else (doctor, plain)
        times = {id(loop): time_block(loop, block, device) for loop in order}
        t_plain.append(times[id(plain)])
        t_doc.append(times[id(doctor)])
        ratios.append(times[id(doctor)] / times[id(plain)])
    doctor.close()
    return {
        "config": name,
        "device": _device_label(device),
        "precision": recipe.precision,
        "plain_ms": 1000 * statistics.median(t_plain),
        "gradoctor_ms": 1000 * statistics.median(t_doc),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": rounds,
        "block": block,
    }


# ---- --instruments: the cost of each instrument ---------------------------------------------


class NormPass:
    """``GradNormTracker``'s work alone: one ``trainer.norms.record()`` per step, on the
    gradients of one real backward (kept on the model; this trainer is never stepped)."""

    def __init__(self, loop):
        self.loop, s = loop, loop.trainer.state
        compute_loss(s.model, to_device(s.data.next(), s.device), s.loss_fn).backward()
        self.norms = loop.trainer.norms

    def step(self):
        self.norms.record()

    def close(self):
        self.loop.close()


def bench_self_time(name, recipe_src, device_name, out_dir, steps=300, rounds=5):
    """Each instrument's own time (``bench/instrument_self_time.py``) over ``steps`` steps
    stepped as ``Trainer.run`` steps them, against the plain loop's time for as many steps
    (``rounds`` interleaved blocks; the medians)."""
    from bench.instrument_self_time import instrument

    recipe, device = _load("plain", recipe_src, device_name, out_dir)
    plain = PlainLoop(recipe, device)
    doctor = DoctorLoop(_load("default", recipe_src, device_name, out_dir)[0])
    totals = instrument(doctor.trainer)
    for loop in (plain, doctor):
        time_block(loop, 20, device)
    totals.clear()
    per_round, plain_s = [], []
    for r in range(rounds):
        before = dict(totals)
        for loop in (plain, doctor) if r % 2 == 0 else (doctor, plain):
            seconds = time_block(loop, steps // rounds, device)
            if loop is plain:
                plain_s.append(seconds)
        per_round.append(
            {k: (v - before.get(k, 0.0)) / (steps // rounds) for k, v in totals.items()}
        )
    doctor.close()
    plain_step = statistics.median(plain_s)
    names = list(per_round[-1])
    rows = {
        k: {
            "ms_per_step": 1e3 * statistics.median(r.get(k, 0.0) for r in per_round),
            "pct_of_plain": 100 * statistics.median(r.get(k, 0.0) for r in per_round) / plain_step,
        }
        for k in names
    }
    total = statistics.median(sum(r.values()) for r in per_round)
    rows["total"] = {"ms_per_step": 1e3 * total, "pct_of_plain": 100 * total / plain_step}
    return {"config": name, "plain_ms": 1e3 * plain_step, "steps": steps, "rows": rows}


def _format_self_time(res):
    lines = [
        f"{res['config']}: each instrument's own time (hooks timed directly; CPU), "
        f"plain step {res['plain_ms']:.2f} ms, {res['steps']} steps",
        f"  {'instrument':16s} {'ms/step':>8s} {'% of plain':>11s}",
    ]
    for name, row in res["rows"].items():
        lines.append(f"  {name:16s} {row['ms_per_step']:8.3f} {row['pct_of_plain']:10.2f}%")
    return "\n".join(lines)


def _breaks_loop(loop):
    """Run one log interval (its steps and flush): the error text if that raises, else None."""
    try:
        for _ in range(loop.trainer.every):
            loop.step()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def bench_instruments(name, recipe_src, rounds, block, warmup, device_name, out_dir):
    """Per round, each comparison (default vs plain, default vs default minus one instrument,
    default vs no snapshots, no snapshots vs every 1000) as two back-to-back blocks, order
    rotated per round; costs in % of that round's plain block."""
    recipe, device = _load("plain", recipe_src, device_name, out_dir)
    loops = {
        "plain": PlainLoop(recipe, device),
        "default": DoctorLoop(_load("default", recipe_src, device_name, out_dir)[0]),
    }
    by_name = {inst.name: inst for inst in loops["default"].trainer.instruments}
    clip = recipe.train.clip_grad_norm is not None
    rows = {}  # row label -> (with, without) loop keys, or ("isolated", key)
    notes = {}
    for inst in by_name:
        loop = DoctorLoop(_load(f"without-{inst}", recipe_src, device_name, out_dir)[0])
        loop.trainer.instruments = [i for i in loop.trainer.instruments if i.name != inst]
        error = _breaks_loop(loop)
        if not any(by_name[inst].active(step) for step in range(1, 1001)):  # pure checks
            notes[inst] = "inactive in this config (one Python call per step)"
        if error is None:
            loops[f"-{inst}"] = loop
            rows[inst] = ("default", f"-{inst}")
            if inst == "grad_norms" and clip:
                notes[inst] = "clipping computes the norms anyway"
            continue
        loop.close()
        if inst != "grad_norms":
            rows[inst], notes[inst] = None, f"removing it breaks the loop ({error})"
            continue
        probe = DoctorLoop(_load("norm-pass", recipe_src, device_name, out_dir)[0])
        loops["norm pass"] = NormPass(probe)
        rows[inst] = ("isolated", "norm pass")
        notes[inst] = f"norm pass alone; removing it breaks the flush ({error})"
    loops["no-snapshot"] = DoctorLoop(
        _load("no-snapshot", recipe_src, device_name, out_dir, {"snapshot_every": 10**9})[0]
    )
    rows["snapshot"] = ("default", "no-snapshot")
    notes["snapshot"] = f"snapshot_every {recipe.diagnostics.snapshot_every} vs never"
    loops["every-1000"] = DoctorLoop(
        _load(
            "every-1000",
            recipe_src,
            device_name,
            out_dir,
            {"every": 1000, "snapshot_every": 10**9},
        )[0]
    )
    rows["interval flush"] = ("no-snapshot", "every-1000")
    notes["interval flush"] = f"every {recipe.diagnostics.every} vs 1000, both without snapshots"
    for loop in loops.values():
        time_block(loop, warmup, device)
    # Each comparison's two blocks run back to back (order alternating), so the machine's
    # drift between them is small; the comparisons' order rotates per round.
    pairs = [("default", "plain")] + [spec for spec in rows.values() if spec is not None]
    cost = {spec: [] for spec in pairs}
    plain, default = [], []
    for r in range(rounds):
        shift = r % len(pairs)
        for i, spec in enumerate(pairs[shift:] + pairs[:shift]):
            with_key, without_key = spec
            if with_key == "isolated":
                cost[spec].append(time_block(loops[without_key], block, device))
                continue
            keys = (with_key, without_key) if (r + i) % 2 == 0 else (without_key, with_key)
            t = {k: time_block(loops[k], block, device) for k in keys}
            cost[spec].append(t[with_key] - t[without_key])
            if spec == ("default", "plain"):
                plain.append(t["plain"])
                default.append(t["default"])
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    for loop in loops.values():
        loop.close()
    table = []
    per_row = []
    for label, spec in [("gradoctor default", ("default", "plain"))] + list(rows.items()):
        if spec is None:
            table.append((label, None, notes[label]))
            continue
        costs = [100 * c / p for c, p in zip(cost[spec], plain)]
        if label != "gradoctor default":
            per_row.append(costs)
        note = notes.get(label, "(default - plain) / plain" if spec[1] == "plain" else "")
        table.append((label, costs, note))
    table.append(("sum of the rows", [sum(c) for c in zip(*per_row)], "per round, then median"))
    return {
        "config": name,
        "device": _device_label(device),
        "precision": recipe.precision,
        "plain_ms": 1000 * statistics.median(plain),
        "gradoctor_ms": 1000 * statistics.median(default),
        "rounds": rounds,
        "block": block,
        "rows": [
            {
                "row": label,
                "cost_pct_median": statistics.median(c) if c else None,
                "cost_pct_min": min(c) if c else None,
                "cost_pct_max": max(c) if c else None,
                "note": note,
            }
            for label, c, note in table
        ],
    }


def _format_instruments(res):
    lines = [
        f"{res['config']} ({res['device']}, {res['precision']}): plain {res['plain_ms']:.2f} "
        f"ms/step, gradoctor {res['gradoctor_ms']:.2f} ms/step; {res['rounds']} rounds of "
        f"{res['block']} steps",
        f"  {'instrument':<18} {'cost % of plain':>15}  {'[min..max]':<17} note",
    ]
    for row in res["rows"]:
        if row["cost_pct_median"] is None:
            lines.append(f"  {row['row']:<18} {'-':>15}  {'':<17} {row['note']}")
            continue
        spread = f"[{row['cost_pct_min']:+.1f}..{row['cost_pct_max']:+.1f}]"
        lines.append(
            f"  {row['row']:<18} {row['cost_pct_median']:>+14.1f}%  {spread:<17} {row['note']}"
        )
    return "\n".join(lines)


# ---- --whole and --base: the whole call, this tree and another --------------------------------


def _whole_rows(rounds_out):
    """[{variant: {plain, gradoctor}}] per round -> rows of medians and ratio spreads."""
    rows = {}
    for label in rounds_out[0]:
        plain = [r[label]["plain"] for r in rounds_out]
        doc = [r[label]["gradoctor"] for r in rounds_out]
        rows[f"whole {label}"] = _ratio_row(plain, doc, "s")
    return rows


def _ratio_row(plain, doc, unit):
    ratios = [d / p for p, d in zip(plain, doc)]
    return {
        "unit": unit,
        "plain": statistics.median(plain),
        "gradoctor": statistics.median(doc),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "n": len(ratios),
    }


def bench_whole(rounds, out_dir):
    whole_warmup(out_dir)
    per_round = []
    for r in range(rounds):
        per_round.append(whole_round(r, out_dir))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return _whole_rows(per_round)


def _cell(row):
    if row is None:
        return f"{'-':<42}"
    scale, unit = (1000, "ms") if row["unit"] == "ms/step" else (1, "s")
    spread = f"[{row['ratio_min']:.3f}..{row['ratio_max']:.3f}]"
    return (
        f"{scale * row['plain']:7.2f} {unit:<2} {scale * row['gradoctor']:7.2f} {unit:<2} "
        f"{row['ratio_median']:.3f} {spread:<14}"
    )


def _format_whole(rows):
    lines = [f"  {'row':<18} {'plain':>10} {'gradoctor':>10} ratio [min..max]"]
    for label, row in rows.items():
        lines.append(f"  {label:<18} {_cell(row)}")
    return "\n".join(lines)


def _run_tree(tree, job):
    """One round of one tree in a subprocess with PYTHONPATH=<tree> first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead_tree.py"), json.dumps(job)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: worker failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    imported = Path(out["gradoctor_file"]).resolve()
    if not imported.is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"asked for {tree}, but gradoctor was imported from {imported}")
    return out


def bench_base(base, configs, rounds, block, warmup, pairs, threads):
    """Per round: one subprocess per tree (order alternating), each the whole-call round and
    ``pairs`` per-step block pairs per config. Returns ({tree: path}, {tree: the imported
    gradoctor/__init__.py}, {tree: {row: ratio row}})."""
    trees = {"after": ROOT, "before": Path(base).resolve()}
    rels = {}
    for name in configs:
        rel = f"recipes/{name}.yaml"
        if all((tree / rel).is_file() for tree in trees.values()):
            rels[name] = rel
    outs = {k: [] for k in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for key in order:
            job = {
                "round": r,
                "threads": threads,
                "whole": True,
                "configs": rels,
                "block": block,
                "warmup": warmup,
                "pairs": pairs,
            }
            outs[key].append(_run_tree(trees[key], job))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    rows = {}
    for key, per_round in outs.items():
        rows[key] = _whole_rows([o["whole"] for o in per_round])
        for name in rels:
            pairs_all = [p for o in per_round for p in o["steps"][name]]
            rows[key][f"{name} per step"] = _ratio_row(
                [p for p, _ in pairs_all], [d for _, d in pairs_all], "ms/step"
            )
    files = {k: outs[k][0]["gradoctor_file"] for k in trees}
    return {k: str(v) for k, v in trees.items()}, files, rows


def _format_base(trees, files, rows):
    lines = [f"  {k:<6} {trees[k]}  (imported {files[k]})" for k in trees]
    head = f"{'plain':>10} {'gradoctor':>10} {'ratio [min..max]':<20}"
    lines.append(f"  {'':<18} {'after (this tree)':<42}   {'before (--base)':<42}   ratio")
    lines.append(f"  {'row':<18} {head}   {head}   after/before")
    for label in rows["after"]:
        a, b = rows["after"][label], rows["before"].get(label)
        change = f"{a['ratio_median'] / b['ratio_median']:.3f}" if b else "-"
        lines.append(f"  {label:<18} {_cell(a)}   {_cell(b)}   {change}")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run the GPU configs on CUDA")
    parser.add_argument("--configs", default=None, help="comma-separated subset")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="default 12; --instruments 8; --whole and --base 5",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        help="steps per timed block, a multiple of diagnostics.every (default 20; "
        "--instruments 100)",
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--ablate", default=None, help="one config: also time it without each instrument"
    )
    parser.add_argument(
        "--instruments", default=None, metavar="CONFIG", help="one config: per-instrument costs"
    )
    parser.add_argument(
        "--whole", action="store_true", help="the whole gradoctor.train() call vs a plain loop"
    )
    parser.add_argument(
        "--base", default=None, metavar="DIR", help="also run --whole and the configs in DIR"
    )
    parser.add_argument("--pairs", type=int, default=4, help="--base: block pairs per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = GPU_CONFIGS if args.gpu else CPU_CONFIGS
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    device = "cuda" if args.gpu else "cpu"
    if args.base:
        if args.gpu:
            parser.error("--base compares the CPU configs and the CPU whole call")
        rounds = args.rounds or 5
        trees, files, rows = bench_base(
            args.base,
            list(configs),
            rounds,
            args.block or 20,
            args.warmup,
            args.pairs,
            args.threads,
        )
        print(
            f"gradoctor/plain, before and after: whole gradoctor.train() ({WHOLE_STEPS} steps, "
            f"9x256 MLP fp32 AdamW, cpu) and per-step blocks of {args.block or 20}; "
            f"{rounds} rounds per tree, trees alternating, threads {args.threads or 'default'}"
        )
        print(_format_base(trees, files, rows), flush=True)
        _write_json(args.json, {"trees": trees, "imported": files, "rows": rows})
        return rows
    if args.whole:
        rounds = args.rounds or 5
        with tempfile.TemporaryDirectory() as tmp:
            rows = bench_whole(rounds, Path(tmp))
        variants = ", ".join(f"{k} {v or '(recipe defaults)'}" for k, v in WHOLE_VARIANTS.items())
        print(
            f"whole gradoctor.train() vs a plain loop: 9x256 MLP, fp32 AdamW, {WHOLE_STEPS} "
            f"steps, cpu, {rounds} rounds, threads {args.threads or 'default'}\n"
            f"  diagnostics: {variants}"
        )
        print(_format_whole(rows), flush=True)
        _write_json(args.json, rows)
        return rows
    if args.instruments:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_instruments(
                args.instruments,
                configs[args.instruments],
                args.rounds or 8,
                args.block or 100,
                args.warmup,
                device,
                Path(tmp),
            )
        print(_format_instruments(res), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            res["self_time"] = bench_self_time(
                args.instruments, configs[args.instruments], device, Path(tmp)
            )
        print(_format_self_time(res["self_time"]), flush=True)
        _write_json(args.json, res)
        return res
    rounds, block = args.rounds or 12, args.block or 20
    rows = []
    if args.ablate:
        src = configs[args.ablate]
        with tempfile.TemporaryDirectory() as tmp:
            for label, diag in ABLATIONS.items():
                blk = max(block, 50) if "every" in diag else block
                row = bench_config(
                    args.ablate, src, rounds, blk, args.warmup, device, Path(tmp), diag
                )
                row["config"] = f"{args.ablate}:{label}"
                rows.append(row)
                print(_format(row), flush=True)
        _write_json(args.json, rows)
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in configs.items():
            try:
                rows.append(bench_config(name, src, rounds, block, args.warmup, device, Path(tmp)))
            except Exception as exc:  # report and go on with the other configs
                rows.append({"config": name, "error": f"{type(exc).__name__}: {exc}"})
            print(_format(rows[-1]), flush=True)
    _write_json(args.json, rows)
    return rows


def _write_json(path, data):
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def _format(row):
    if "error" in row:
        return f"{row['config']:<16} ERROR {row['error']}"
    goal = 1.03 if row["device"] != "cpu" else 1.05
    verdict = "ok" if row["ratio_median"] <= goal else "OVER"
    return (
        f"{row['config']:<28} {row['device']:<22} {row['precision']:<5} plain {row['plain_ms']:8.2f} ms  "
        f"gradoctor {row['gradoctor_ms']:8.2f} ms  ratio {row['ratio_median']:.3f} "
        f"[{row['ratio_min']:.3f}..{row['ratio_max']:.3f}]  goal <= {goal} {verdict}"
    )


if __name__ == "__main__":
    main()
