"""``gradoctor train recipe.yaml --nproc-per-node N``: re-run the command under torchrun.

The parent validates the recipe first (a bad recipe fails here, once, with exit code 2),
then runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m gradoctor
train ...`` and waits. Each worker is an ordinary ``gradoctor train`` that finds torchrun's
environment (RANK, WORLD_SIZE, ...) and trains as one rank. torchrun turns any failed worker
into its own exit status 1, so the parent maps the outcome from rank 0's ``report.json``:
0 trained, 1 failed, 3 ``--fail-on`` matched, 4 out of memory, 130 interrupted.

Multi-node runs use torchrun directly (``torchrun --nnodes ... -m gradoctor train ...``).

It sits in the api layer, beside ``gradoctor.api`` (whose ``validate`` and ``load_report`` it
calls), not in ``gradoctor.distributed``, which the training loop imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gradoctor.api import load_report, validate
from gradoctor.diagnose.types import at_or_above
from gradoctor.errors import UsageError
from gradoctor.training.run_folder import claim_run_folder, previous_outputs

# The folder that holds gradoctor/, put on the workers' PYTHONPATH.
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def torchrun_command(
    recipe: Path,
    nproc_per_node: int,
    overrides: list[str],
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> list[str]:
    """The torchrun command line that runs ``gradoctor train`` on ``nproc_per_node`` ranks."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node, a free local port for the rendezvous
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "gradoctor",
        "train",
        str(recipe),
        *overrides,
        "--fail-on=never",  # the parent applies --fail-on to rank 0's report
    ]
    if resume is not None:
        cmd.append(f"--resume={resume}")
    if overwrite:
        cmd.append("--overwrite")
    if quiet:
        cmd.append("--quiet")
    return cmd


def launch(
    recipe: Path,
    nproc_per_node: int,
    overrides: list[str],
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    fail_on: str = "never",
) -> int:
    """Run the recipe on ``nproc_per_node`` local processes; returns the exit code."""
    if nproc_per_node < 1:
        raise UsageError("--nproc-per-node must be at least 1")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UsageError(
            "--nproc-per-node inside a torchrun worker",
            hint="use either torchrun ... -m gradoctor train, or --nproc-per-node, not both",
        )
    loaded = validate(recipe, overrides)  # RecipeError (exit 2) before any process starts
    if resume is None and not overwrite and previous_outputs(loaded.output_dir()):
        claim_run_folder(loaded.output_dir(), overwrite=False)  # the refusal, before torchrun
    report_path = loaded.output_dir() / "report.json"
    started = report_path.stat().st_mtime_ns if report_path.exists() else None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    cmd = torchrun_command(
        recipe, nproc_per_node, overrides, resume=resume, overwrite=overwrite, quiet=quiet
    )
    process = subprocess.Popen(cmd, env=env)
    while True:
        try:
            rc = process.wait()
            break
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: wait for their report
            continue
    fresh = report_path.exists() and report_path.stat().st_mtime_ns != started
    if not fresh:
        return rc or 1
    result = load_report(report_path)
    if result.status == "interrupted":
        return 130
    if result.status == "failed":
        oom = any(d.get("code") == "memory" for d in result.diagnoses)
        return 4 if oom else 1
    if rc != 0:
        return rc
    return 3 if at_or_above(result.diagnoses, fail_on) else 0
