"""Test-wide JAX setup: 8 CPU devices so sharding is exercised without accelerators."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# Compiling is most of this suite's time (tiny models, a few steps each), and XLA's CPU compiler
# spends much of it in LLVM passes that only speed up long runs: without them
# tests/train/test_objectives_train.py takes 116 s instead of 206 s. FBJAX_TEST_FULL_XLA_OPT=1
# keeps the full optimisation (the numerics the tests check are the same either way).
if not os.environ.get("FBJAX_TEST_FULL_XLA_OPT"):
    from tests.cli_runs import FAST_COMPILE  # noqa: E402

    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
