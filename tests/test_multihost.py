"""Multi-host training, proven with several processes on one machine.

Every run goes through the real command line (``python -m fbjax.cli train``) in subprocesses,
each process with its own CPU devices, joined by JAX's coordination service on 127.0.0.1 and
talking over Gloo (JAX's default CPU collectives). The mesh always has 4 devices: one process
with 4, or two processes with 2 each, so the programs agree and the results must too.

* two processes train the same steps as one process on the same global batches (params, optimizer
  state, loss and data position equal to rtol 1e-5);
* a checkpoint written by two processes continues in one, and one written by one process
  continues in two, both landing on the uninterrupted single-process result;
* when one process is killed mid-run, the survivor exits non-zero within a bounded time
  (``FBJAX_HEARTBEAT_TIMEOUT``) instead of hanging in a collective.

The pytest process itself never initialises the distributed runtime (tests/conftest.py owns its
JAX setup); the subprocesses get their own environment.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import cli_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(REPO, "experiments", "sft_sim.py") + ":tiny"
DEVICES = 4  # global devices in every run
STEPS = 4  # tiny checkpoints every 2 steps and logs every 2: checkpoints 2 and 4
RUN_TIMEOUT = 240  # seconds for one phase of runs; generous for a loaded 2-core machine
HEARTBEAT = 10  # seconds; the survivors' bound in the failure test, see below
EXIT_BOUND = 60  # seconds from a kill until the survivor must have exited
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(local_devices: int, cache_dir: str, port: int | None = None) -> dict[str, str]:
    # Drop the pytest process's JAX/XLA settings (8 devices); each run states its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "FBJAX_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices} "
                  + ("" if os.environ.get("FBJAX_TEST_FULL_XLA_OPT") else cli_runs.FAST_COMPILE),
        PYTHONUNBUFFERED="1",
        FBJAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT),
    )
    if port is None:
        # Single-process runs share compiled programs (compiling dominates these runs). Not
        # multi-process ones: JAX caches only process 0's programs, so process 1 would lag
        # behind by its compile time, and Gloo gives processes 30 s to meet at a first
        # collective.
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    else:
        # The coordinator binds all interfaces by default; loopback is all we need.
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    return env


class Run:
    """One ``fbjax train`` with ``num_processes`` processes on this machine (started at once)."""

    def __init__(self, workdir: str, num_processes: int, cache_dir: str, steps: int = STEPS):
        self.workdir = workdir
        self.logs = [f"{workdir}.process{i}.log" for i in range(num_processes)]
        port = _free_port() if num_processes > 1 else None
        command = [sys.executable, "-m", "fbjax.cli", "train", "--experiment", EXPERIMENT,
                   "--workdir", workdir, "--no-progress", "--set", f"train.steps={steps}"]
        self.procs = []
        for i, log in enumerate(self.logs):
            extra = []
            if num_processes > 1:
                extra = ["--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", str(num_processes), "--process-id", str(i)]
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(
                    command + extra, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                    env=_env(DEVICES // num_processes, cache_dir, port),
                ))

    def output(self, i: int) -> str:
        with open(self.logs[i]) as f:
            return f.read()

    def wait(self, deadline: float) -> None:
        """Waits for every process until ``deadline`` (time.monotonic); all must succeed."""
        try:
            for p in self.procs:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.workdir}: timed out\n{self.output(0)[-3000:]}")
        for i, p in enumerate(self.procs):
            assert p.returncode == 0, f"process {i} failed:\n{self.output(i)[-4000:]}"

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_all(runs: list[Run]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for run in runs:
            run.wait(deadline)
    finally:
        for run in runs:
            run.kill()


def _state(workdir: str, step: int) -> dict[str, np.ndarray]:
    """Every array of the TrainState saved at ``step``, as numpy, keyed by its path.

    Read straight from Orbax with numpy targets, so the saving run's mesh does not matter.
    """
    path = os.path.join(workdir, "sft", "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, restore_args=restore_args)
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _extras(workdir: str, step: int) -> dict:
    path = os.path.join(workdir, "sft", "checkpoints", str(step), "extras", "metadata")
    with open(path) as f:
        return json.load(f)


def _summary(workdir: str) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)["stages"]["sft"]


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and sorted(keys) == sorted(k for k in b if k.startswith(prefix))
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in keys)


def _assert_same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=1e-7, err_msg=k)
    return _max_abs_diff(got, want, "['params']")


def _continue_from(src_workdir: str, step: int, dst_workdir: str) -> None:
    """A fresh workdir holding only ``src``'s checkpoint of ``step`` (commit marker included)."""
    shutil.copytree(os.path.join(src_workdir, "sft", "checkpoints", str(step)),
                    os.path.join(dst_workdir, "sft", "checkpoints", str(step)))


def test_same_program_on_every_host(tmp_path):
    """Four runs in two phases of concurrent processes (one test, so that ``pytest -n`` cannot
    split the runs over workers and repeat them)::

        single           1 process,   steps 0-4      multi  2 processes, steps 0-4
        single_to_multi  2 processes, steps 2-4 from single's checkpoint 2
        multi_to_single  1 process,   steps 2-4 from multi's checkpoint 2

    All four must end in the uninterrupted single-process state.
    """
    cache = str(tmp_path / "jax_cache")
    dirs = {name: str(tmp_path / name)
            for name in ("single", "multi", "single_to_multi", "multi_to_single")}
    single, multi = Run(dirs["single"], 1, cache), Run(dirs["multi"], 2, cache)
    _wait_all([single, multi])
    _continue_from(dirs["single"], 2, dirs["single_to_multi"])
    _continue_from(dirs["multi"], 2, dirs["multi_to_single"])
    to_multi = Run(dirs["single_to_multi"], 2, cache)
    to_single = Run(dirs["multi_to_single"], 1, cache)
    _wait_all([to_multi, to_single])

    # One mesh over both processes.
    multi_out = multi.output(0) + multi.output(1)
    assert "process 0 of 2 joined" in multi_out and "process 1 of 2 joined" in multi_out
    assert "4 global devices" in multi_out

    # Two processes train exactly like one: parameters, optimizer state, losses, data position.
    want = _state(dirs["single"], STEPS)
    diff = _assert_same_state(_state(dirs["multi"], STEPS), want)
    print(f"max |params(2 processes) - params(1 process)| = {diff:.3g}")
    _assert_same_state(_state(dirs["multi"], 2), _state(dirs["single"], 2))
    s, m = _summary(dirs["single"]), _summary(dirs["multi"])
    assert m["step"] == s["step"] == STEPS
    for key in ("loss", "grad_norm", "tokens"):
        np.testing.assert_allclose(m[key], s[key], rtol=RTOL, err_msg=key)
    # Every host consumed the same global batches, so the saved data position is the same.
    data_states = [_extras(dirs[name], STEPS)["data_state"] for name in ("multi", "single")]
    assert data_states[0] == data_states[1]

    # Logging, TensorBoard and the side files on process 0 only.
    events = glob.glob(os.path.join(dirs["multi"], "sft", "tensorboard", "*tfevents*"))
    assert len(events) == 1, events
    assert "parameter bytes replicated" in multi.output(0)
    assert "parameter bytes replicated" not in multi.output(1)

    # Checkpoints move between process counts, in both directions, and continue exactly.
    for name, run in (("single_to_multi", to_multi), ("multi_to_single", to_single)):
        assert "resumed from checkpoint step 2" in run.output(0), name
        diff = _assert_same_state(_state(dirs[name], STEPS), want)
        print(f"{name}: max |params - uninterrupted single-process params| = {diff:.3g}")
        np.testing.assert_allclose(_summary(dirs[name])["loss"], s["loss"], rtol=RTOL,
                                   err_msg=name)


def test_dead_process_stops_the_others(tmp_path):
    """Kill process 1 mid-run (SIGKILL: no chance to say goodbye); process 0 must exit non-zero
    within EXIT_BOUND seconds. The coordination service notices the silence within the heartbeat
    timeout (HEARTBEAT) and every survivor aborts with an error naming the lost process; a
    survivor inside a collective fails even sooner, then exits through the same check."""
    workdir = str(tmp_path / "run")
    run = Run(workdir, 2, str(tmp_path / "jax_cache"), steps=10_000)
    try:
        # Both processes are in the training loop once the first checkpoint is committed.
        marker = os.path.join(workdir, "sft", "checkpoints", "2", "fbjax_commit.json")
        deadline = time.monotonic() + RUN_TIMEOUT
        while not os.path.exists(marker):
            assert time.monotonic() < deadline, run.output(0)[-3000:]
            assert all(p.poll() is None for p in run.procs), run.output(0)[-3000:]
            time.sleep(0.2)
        run.procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            rc = run.procs[0].wait(timeout=EXIT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still running {EXIT_BOUND}s after process 1 died")
        elapsed = time.monotonic() - killed
        print(f"survivor exited with {rc} {elapsed:.1f}s after the kill")
        assert rc != 0
        out = run.output(0)
        assert "unhealthy" in out or "heartbeat" in out.lower(), out[-3000:]
    finally:
        run.kill()
