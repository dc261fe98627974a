"""Resuming real training runs through the CLI: SIGKILL, SIGTERM and a corrupt checkpoint.

Every run is ``python -m fbjax.cli train`` on ``sft_sim:tiny`` in a subprocess with one CPU
device (conftest's 8-device XLA_FLAGS is removed from its environment). ``train.steps`` is raised
from 12 to 40 for every run alike, so that a signal sent once a checkpoint appears reliably lands
mid-run (a step takes ~0.1 s); all runs then trace the same programs, and a persistent JAX
compilation cache shared by the subprocesses (their environment only) lets every run after the
first skip compilation. Cached executables are the same binaries, so bitwise comparisons hold.

For speed, the SIGTERM and corrupt-checkpoint runs start in the background once the reference
run has filled the cache, and proceed while the SIGKILL test runs in the foreground.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fbjax import analysis
from fbjax import checkpoint as ck
from tests import cli_runs

pytestmark = pytest.mark.slow

STEPS = 40
COMMAND = [
    "train", "--experiment", "experiments/sft_sim.py:tiny",
    "--no-progress", "--set", f"train.steps={STEPS}",
]
# The run is one training stage, "sft": its checkpoints are under <workdir>/sft/checkpoints.
CKPT = Path("sft", "checkpoints")
TIMEOUT = 300  # seconds per run: generous, CI machines may be heavily loaded


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def _start(workdir: Path, jax_cache: Path) -> tuple[subprocess.Popen, Path]:
    """Starts a training run; its stdout and stderr go to a log file next to the workdir."""
    return cli_runs.start(COMMAND + ["--workdir", str(workdir)], workdir.parent, jax_cache)


def _finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    return cli_runs.finish(proc, log, TIMEOUT)


def _train(workdir: Path, jax_cache: Path) -> str:
    """Runs to completion; returns the log."""
    rc, text = _finish(*_start(workdir, jax_cache))
    assert rc == 0, text[-4000:]
    return text


def _wait_for_checkpoint(proc: subprocess.Popen, log: Path, root: Path, min_step: int) -> int:
    """Polls until Orbax has finalised a step >= ``min_step`` (its tmp dir renamed to ``<step>``),
    returning that step; fails if the run ends first."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        steps = [int(n) for n in os.listdir(root) if n.isdigit()] if root.is_dir() else []
        if steps and max(steps) >= min_step:
            return max(steps)
        if proc.poll() is not None:
            pytest.fail(f"run exited (rc {proc.returncode}) before checkpoint step {min_step}; "
                        f"log:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint step >= {min_step} after {TIMEOUT}s")


def _param_bytes(workdir: Path, step: int) -> list[tuple[str, str, tuple, bytes]]:
    """The parameters of ``step`` as (path, dtype, shape, raw bytes) rows, restored on one
    device without the optimizer."""
    policy = analysis.load_policy(workdir, step)
    assert policy.step == step
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(policy.params)[0]:
        x = np.asarray(x)
        rows.append((jax.tree_util.keystr(path), str(x.dtype), x.shape, x.tobytes()))
    return rows


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache) -> Path:
    """An uninterrupted run to ``STEPS`` (the first run: it fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("resume") / "reference"
    _train(workdir, jax_cache)
    assert ck.list_steps(workdir / CKPT)[-1] == STEPS
    return workdir


@pytest.fixture(scope="module")
def reference_params(reference) -> list:
    return _param_bytes(reference, STEPS)


class _Background:
    """A run started now and awaited by a later test; ``signal_at`` sends a signal from a
    watcher thread once a checkpoint of at least that step exists."""

    def __init__(self, workdir: Path, jax_cache: Path, signal_at: tuple[int, int] | None = None):
        self.workdir = workdir
        self.proc, self.log = _start(workdir, jax_cache)
        self.error: str | None = None
        self.hashes_before: dict[str, str] = {}
        self.watcher = None
        if signal_at is not None:
            self.watcher = threading.Thread(target=self._signal, args=signal_at, daemon=True)
            self.watcher.start()

    def _signal(self, min_step: int, sig: int):
        try:
            _wait_for_checkpoint(self.proc, self.log, self.workdir / CKPT, min_step)
            self.proc.send_signal(sig)
        except BaseException as e:  # noqa: BLE001 - pytest.fail raises outside Exception
            self.error = str(e)

    def result(self) -> tuple[int, str]:
        rc, text = _finish(self.proc, self.log)
        if self.watcher is not None:
            self.watcher.join()
        assert self.error is None, self.error
        return rc, text


def _corrupt_copy(reference: Path, workdir: Path) -> dict[str, str]:
    """Copies the reference run and truncates its newest checkpoint's largest array file;
    returns the file hashes of the step before it."""
    shutil.copytree(reference, workdir)
    root = workdir / CKPT
    victim = max((p for p in (root / str(STEPS) / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    return _file_hashes(root / str(STEPS - 2))  # every_steps=2 in the tiny variant


@pytest.fixture(scope="module")
def background(reference, jax_cache, tmp_path_factory):
    base = tmp_path_factory.mktemp("background")
    hashes = _corrupt_copy(reference, base / "corrupt")
    runs = {
        "preempted": _Background(base / "preempted", jax_cache, (2, signal.SIGTERM)),
        "corrupt": _Background(base / "corrupt", jax_cache),
    }
    runs["corrupt"].hashes_before = hashes
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_sigkill_then_restart_matches_uninterrupted_run(reference, background, reference_params,
                                                        jax_cache, tmp_path):
    workdir = tmp_path / "killed"
    root = workdir / CKPT
    proc, log = _start(workdir, jax_cache)
    seen = _wait_for_checkpoint(proc, log, root, min_step=4)
    proc.send_signal(signal.SIGKILL)  # whatever it is doing: stepping, writing or committing
    rc, text = _finish(proc, log)
    assert rc == -signal.SIGKILL, text[-4000:]
    complete = ck.list_steps(root)
    assert complete and max(complete) < STEPS, (seen, complete)

    text = _train(workdir, jax_cache)  # the same command again
    resumed = re.search(r"resumed from checkpoint step (\d+)", text)
    assert resumed and int(resumed.group(1)) == max(complete), text[-4000:]
    assert ck.list_steps(root)[-1] == STEPS
    assert _param_bytes(workdir, STEPS) == reference_params
    # The data iterator resumed where it was, too.
    assert (ck.read_extras(root, STEPS)["data_state"]
            == ck.read_extras(reference / CKPT, STEPS)["data_state"])


def test_sigterm_saves_current_step_and_exits_cleanly(background):
    run = background["preempted"]  # SIGTERM sent once checkpoint step 2 existed
    rc, text = run.result()
    assert rc == 0, text[-4000:]
    match = re.search(r"SIGTERM received: checkpoint saved at step (\d+), exiting", text)
    assert match, text[-4000:]
    step = int(match.group(1))
    assert 2 <= step < STEPS
    assert f"sft_sim: sft step {step} " in text  # the run's own summary line: it stopped there
    root = run.workdir / CKPT
    status = ck.step_status(root)
    assert max(status) == step and status[step] is None  # complete, and nothing newer
    extras = ck.read_extras(root, step)
    assert extras["metrics"] and extras["data_state"] is not None
    assert analysis.load_policy(run.workdir).step == step  # arrays verify against their marker


def test_corrupt_latest_checkpoint_falls_back_on_resume(reference_params, background):
    run = background["corrupt"]  # the reference run with step STEPS truncated, run again
    rc, text = run.result()
    assert rc == 0, text[-4000:]
    previous = STEPS - 2
    assert re.search(rf"checkpoint step {STEPS} in \S+ is incomplete or corrupt: .*bytes.*"
                     "falling back to an earlier checkpoint", text), text[-4000:]
    assert f"resumed from checkpoint step {previous} " in text
    root = run.workdir / CKPT
    assert _file_hashes(root / str(previous)) == run.hashes_before  # the fallback is untouched
    assert ck.list_steps(root)[-2:] == [previous, STEPS]  # and the corrupt one was replaced
    assert _param_bytes(run.workdir, STEPS) == reference_params  # an exact resume from there


def test_ten_sigkills_at_random_times_then_the_same_numbers(reference, reference_params,
                                                            jax_cache, tmp_path):
    """One run killed with SIGKILL ten times, each at a random moment after its (re)start (while
    starting, stepping, writing or committing a checkpoint), restarted with the same command
    each time: it ends with the uninterrupted run's parameters and data position."""
    rng = np.random.default_rng(1234)
    workdir = tmp_path / "ten_kills"
    root = workdir / CKPT
    kills = 0
    while kills < 10:
        proc, log = _start(workdir, jax_cache)
        time.sleep(float(rng.uniform(0.5, 4.0)))
        if proc.poll() is not None:  # finished before the kill: start over to kill it again
            rc, text = _finish(proc, log)
            assert rc == 0, text[-4000:]
            shutil.rmtree(workdir)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    text = _train(workdir, jax_cache)
    assert ck.list_steps(root)[-1] == STEPS, text[-4000:]
    assert _param_bytes(workdir, STEPS) == reference_params
    assert (ck.read_extras(root, STEPS)["data_state"]
            == ck.read_extras(reference / CKPT, STEPS)["data_state"])
