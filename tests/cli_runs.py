"""``fbjax`` command-line runs in subprocesses, as a user runs them: one CPU device (the test
session's 8-device XLA flags removed), and an optional persistent compilation cache shared by
the runs of one test so that only the first compiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FBJAX = [sys.executable, "-m", "fbjax.cli"]


# XLA's CPU compiler without its expensive LLVM passes: a third less compile time, which is
# most of a few-step run of a tiny model. The test session uses it too (conftest.py).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env(cache: Path | None = None, *, fast_compile: bool = True) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out["JAX_PLATFORMS"] = "cpu"
    if fast_compile and not os.environ.get("FBJAX_TEST_FULL_XLA_OPT"):
        out["XLA_FLAGS"] = FAST_COMPILE
    if cache is not None:
        out["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return out


def start(args: list[str], log_dir: Path, cache: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """Starts ``fbjax ARGS``; its stdout and stderr go to a new log file in ``log_dir``."""
    log = log_dir / f"run.{time.monotonic_ns()}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(FBJAX + args, cwd=REPO, env=env(cache), stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, log


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    """Waits for the run; returns its exit code and log (fails the test on a time-out)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"fbjax run timed out; log:\n{log.read_text()[-4000:]}")
    return rc, log.read_text()
