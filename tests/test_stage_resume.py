"""A staged simulator run killed with SIGKILL and started again with the same command ends with the
same numbers as a run that was never interrupted.

The run is ``experiments/dpo_rafailov2023.py:smoke`` (SFT, a sample pool, DPO, an evaluation)
through ``python -m fbjax.cli train`` with one CPU device. It is killed twice: once in the middle
of SFT (after a checkpoint exists) and once after the pool was written, before DPO finished;
each restart resumes where the last one stopped. Subprocesses share a persistent compilation
cache, so every run after the first skips compiling (cached executables are the same binaries).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fbjax import analysis
from fbjax import checkpoint as ck
from tests import cli_runs

pytestmark = pytest.mark.slow

# Checkpoints every 100 steps, a multiple of the SFT stage's log interval, so a resumed stage logs
# the same windows as an uninterrupted one.
COMMAND = [
    "train", "--experiment",
    "experiments/dpo_rafailov2023.py:smoke", "--no-progress",
    "--set", "checkpoint.every_steps=100",
]
TIMEOUT = 600


def _start(workdir: Path, cache: Path):
    return cli_runs.start(COMMAND + ["--workdir", str(workdir)], workdir.parent, cache)


def _finish(proc, log) -> tuple[int, str]:
    return cli_runs.finish(proc, log, TIMEOUT)


def _kill_when(proc, log, ready) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before the kill point; "
                        f"log:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    rc, text = _finish(proc, log)
    assert rc == -signal.SIGKILL, text[-4000:]


def _numbers(workdir: Path) -> dict:
    """Everything the run reports, less wall-clock times."""
    results = json.loads((workdir / "results.json").read_text())
    for row in results["methods"]:
        row.pop("seconds")
    summary = json.loads((workdir / "summary.json").read_text())
    stages = {name: {k: v for k, v in m.items() if k != "tokens_per_second"}
              for name, m in summary["stages"].items()}
    params = analysis.load_policy(workdir / "DPO").params
    flat = [np.asarray(x).tobytes() for x in jax.tree.leaves(params)]
    return {"results": results, "stages": stages, "params": flat}


def test_sigkill_midway_then_same_command_gives_the_same_numbers(tmp_path):
    cache = tmp_path / "jax_cache"
    reference = tmp_path / "reference"
    rc, text = _finish(*_start(reference, cache))
    assert rc == 0, text[-4000:]

    workdir = tmp_path / "killed"
    sft_root = workdir / "sft" / "checkpoints"
    proc, log = _start(workdir, cache)
    # Once a checkpoint of SFT is complete (committed, not just written).
    _kill_when(proc, log, lambda: sft_root.is_dir() and any(
        s >= 100 for s in ck.list_steps(sft_root)))
    steps = ck.list_steps(sft_root)
    assert steps and max(steps) < 400  # killed in the middle of SFT

    proc, log = _start(workdir, cache)  # the same command again
    _kill_when(proc, log, lambda: (workdir / "pool" / "pool.json").exists())
    assert not (workdir / "results.json").exists()

    rc, text = _finish(*_start(workdir, cache))
    assert rc == 0, text[-4000:]
    assert "resumed from checkpoint step 400" in text  # SFT was finished: restored, not rerun
    assert _numbers(workdir) == _numbers(reference)
