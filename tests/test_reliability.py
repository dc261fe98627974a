"""Reliability of real (tiny) training runs: damaged checkpoints are repaired, non-finite states
are never saved, the non-finite policy halts or rolls back, finished runs keep their metrics.

Every run is ``fbjax.train.loop.train`` with a :class:`~fbjax.checkpoint.RunCheckpointer` on a
tiny model, checkpointing every 2 of 8 steps. One uninterrupted run (module fixture) is the
reference that the interrupted, damaged and rolled-back runs are compared with, bitwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fbjax import analysis
from fbjax import checkpoint as ck
from fbjax import sharding as fsh
from fbjax.run.overrides import to_jsonable
from fbjax.run.start import random_params
from fbjax.train import loop, presets
from fbjax.train.config import TrainConfig, TrainJob
from fbjax.train.stream import batch_stream
from fbjax.train.nonfinite import NonFiniteLossError, NonFinitePolicy
from fbjax.train.optim import OptimizerConfig
from tests.train.helpers import random_groups, tiny_llama

STEPS = 8
MODEL = tiny_llama(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
MESH = fsh.MeshConfig(shape=(1, 2, 1), rules=fsh.RULES_FSDP)
# hash_max_bytes=0: every array file is "above the hash limit" (checked by size only).
CHECKPOINT = ck.CheckpointConfig(every_steps=2, keep=None, async_save=False, hash_max_bytes=0)
CONFIG = TrainJob(
    name="reliability", model=MODEL, objective=presets.sft(),
    optimizer=OptimizerConfig(learning_rate=3e-3, schedule="constant"),
    train=TrainConfig(steps=STEPS, batch=4, seq_len=32, slots_per_row=4, log_every=1),
    rules=MESH.rules,
)
GROUPS = random_groups(40, completions=1, vocab=MODEL.vocab_size, seed=3)

pytestmark = pytest.mark.slow  # eight tiny training runs


@pytest.fixture(scope="module")
def mesh():
    return fsh.make_mesh(MESH, jax.devices()[:2])


class Poisoned:
    """The batch stream, with NaN loss masks in the batches of the given ``next()`` calls
    (counted over the whole run, so a replayed batch after a rollback is clean)."""

    def __init__(self, stream, calls):
        self._stream, self._calls, self.count = stream, set(calls), 0

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        batch = next(self._stream)
        if self.count in self._calls:
            batch = dict(batch, loss_mask=np.full_like(batch["loss_mask"], np.nan))
        return batch

    def __getattr__(self, name):  # get_state / set_state / spec
        return getattr(self._stream, name)


def _train(mesh, root: Path, config=CONFIG, *, poison=(), allow=False):
    checkpointer = ck.RunCheckpointer(
        root, CHECKPOINT, experiment_config=to_jsonable(config), handle_sigterm=False,
        allow_config_change=allow,
    )
    stream = Poisoned(batch_stream(config.train, config.model, GROUPS, seed=config.seed,
                                   mesh=mesh), poison)
    params = random_params(config.model, mesh, config.rules, 0)
    return loop.train(config, stream, params, mesh=mesh, progress=False, checkpointer=checkpointer)


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _saved_params(root: Path, step: int):
    """The parameters of ``step`` read back (and verified) on one device."""
    policy = analysis.load_policy(root, step)
    return _host(policy.params)


def _raw_arrays(root: Path, step: int) -> dict[str, np.ndarray]:
    """Every array of a saved step, read with Orbax alone (none of fbjax's checks)."""
    path = root / str(step) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        arrays = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(arrays)[0]}


def _assert_all_finite(root: Path):
    for step in sorted(int(n) for n in os.listdir(root) if n.isdigit()):
        for name, x in _raw_arrays(root, step).items():
            if np.issubdtype(x.dtype, np.floating):
                assert np.all(np.isfinite(x)), f"step {step}: {name} holds NaN/Inf"


def _copy_until(source: Path, target: Path, last: int):
    shutil.copytree(source, target)
    for name in os.listdir(target):
        if name.isdigit() and int(name) > last:
            shutil.rmtree(target / name)


@pytest.fixture(scope="module")
def reference(mesh, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability") / "reference"
    result = _train(mesh, root)
    assert ck.list_steps(root) == [2, 4, 6, 8]
    return root, _host(result.state.params), result.history


def test_damaged_final_step_is_reported_and_replaced(mesh, reference, tmp_path, caplog):
    source, final_params, history = reference
    root = tmp_path / "ckpt"
    shutil.copytree(source, root)
    # Flip 32 bytes at five places of the final step's largest array file; its size is
    # unchanged, and with hash_max_bytes=0 no file is hashed, so only reading the arrays can
    # tell. (Not every byte of an OCDBT data file is read back: with orbax 0.12.8 flips at 50-90%
    # of this file change no restored array, while one at 10% changes params/embedding.)
    files = [p for p in (root / str(STEPS) / "state").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for start in (len(data) * k // 10 for k in (1, 3, 5, 7, 9)):
        for i in range(start, start + 32):
            data[i] ^= 0xFF
    victim.write_bytes(bytes(data))

    assert ck.step_status(root)[STEPS] is None  # the static check is blind to it ...
    report = analysis.describe_checkpoint(root)
    assert f"{STEPS}  DAMAGED: " in report  # ... inspect (which reads the arrays) is not
    assert f"{STEPS - 2}  complete, verified  <- chosen" in report

    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        result = _train(mesh, root)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"checkpoint step {STEPS} " in m and "falling back" in m for m in messages)
    assert any(f"replacing checkpoint step {STEPS} " in m for m in messages)
    assert ck.step_status(root, verify=True) == {s: None for s in (2, 4, 6, 8)}
    assert f"{STEPS}  complete, verified  <- chosen" in analysis.describe_checkpoint(root)
    # The replacement is what the uninterrupted run saved (an exact resume from step 6).
    for a, b in zip(_saved_params(root, STEPS), final_params):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_host(result.state.params), final_params):
        np.testing.assert_array_equal(a, b)

    # Running the finished run again trains nothing and returns the saved final metrics.
    again = _train(mesh, root)
    assert len(again.history) == 1
    assert again.history[-1]["loss"] == history[-1]["loss"]
    assert again.history[-1]["step"] == STEPS


def test_overflowing_update_is_never_applied_or_saved(mesh, reference, tmp_path):
    source, _, _ = reference
    root = tmp_path / "ckpt"
    _copy_until(source, root, 4)
    huge = dataclasses.replace(CONFIG, optimizer=dataclasses.replace(CONFIG.optimizer,
                                                                     learning_rate=1e39))
    with pytest.raises(NonFiniteLossError, match=r"step 5 of reliability: the update \(learning "
                                                 r"rate 1e\+39\) made parameters"):
        _train(mesh, root, huge, allow=True)
    # The resumed state (step 4) was never replaced by an Inf one: nothing newer was saved,
    # and every saved array is finite.
    assert sorted(int(n) for n in os.listdir(root) if n.isdigit()) == [2, 4]
    _assert_all_finite(root)
    assert ck.step_status(root, verify=True) == {2: None, 4: None}


def test_nan_halts_and_saves_only_the_intact_state(mesh, reference, tmp_path):
    _, final_params, _ = reference
    root = tmp_path / "ckpt"
    with pytest.raises(NonFiniteLossError, match="step 6 of reliability: loss=nan"):
        _train(mesh, root, poison=(6,))
    # Steps 2 and 4 on the cadence, and step 5 (the intact state) saved by the halt.
    assert ck.list_steps(root) == [2, 4, 5]
    _assert_all_finite(root)
    # Saved with its own data position: rerunning (the data now clean) ends exactly where the
    # uninterrupted run did, so batch 6 was neither skipped nor repeated.
    result = _train(mesh, root)
    for a, b in zip(_host(result.state.params), final_params):
        np.testing.assert_array_equal(a, b)


def test_rollback_continues_from_last_good_step_with_lower_lr(mesh, reference, tmp_path, caplog):
    source, _, _ = reference
    config = dataclasses.replace(CONFIG, nonfinite=NonFinitePolicy(max_rollbacks=1, lr_factor=0.5))
    root = tmp_path / "rolled"
    # Batch 5 is poisoned: roll back to step 4, halve the learning rate, retrain step 5 on the
    # (now clean) batch 5; then batch 6 is poisoned too, which exceeds max_rollbacks=1: halt.
    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteLossError,
                                                         match=r"step 6 .*\(after 1 rollbacks"):
        _train(mesh, root, config, poison=(5, 7))
    assert any("rollback 1 of 1: continuing from step 4" in r.getMessage()
               for r in caplog.records)
    assert ck.list_steps(root) == [2, 4, 5]  # step 5: the intact state saved by the halt
    assert ck.read_extras(root, 5)["run"] == {"lr_scale": 0.5, "rollbacks": 1}
    _assert_all_finite(root)

    # Step 5 is what resuming the uninterrupted run's step 4 with half the learning rate gives
    # (bitwise; with Adam, another learning rate gives other parameters).
    expected_root = tmp_path / "expected"
    _copy_until(source, expected_root, 4)
    half = dataclasses.replace(
        CONFIG, optimizer=dataclasses.replace(CONFIG.optimizer, learning_rate=1.5e-3),
        train=dataclasses.replace(CONFIG.train, steps=5))
    expected = _train(mesh, expected_root, half, allow=True)
    got = _saved_params(root, 5)
    for a, b in zip(got, _host(expected.state.params)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- through the CLI

EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "sft_sim.py") + ":tiny"


def _cli(workdir: Path, *sets: str) -> int:
    from fbjax import cli

    args = ["train", "--experiment", EXPERIMENT, "--workdir", str(workdir), "--no-progress"]
    for s in ("train.steps=2", *sets):
        args += ["--set", s]
    return cli.main(args)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_refuses_changed_config_on_resume_in_one_line(tmp_path, capsys):
    assert _cli(tmp_path / "run") == 0
    capsys.readouterr()
    assert _cli(tmp_path / "run", "optimizer.learning_rate=0.5", "seed=1") == 2
    line = _error_line(capsys)
    assert line.startswith("fbjax train: error: checkpoint step 2 in ")
    assert "stage.optimizer.learning_rate: 0.003 -> 0.5" in line and "seed: 0 -> 1" in line
    # Allowed explicitly, the run continues with the new settings.
    assert _cli(tmp_path / "allowed") == 0
    capsys.readouterr()
    assert _cli(tmp_path / "allowed", "optimizer.learning_rate=0.5",
                "allow_config_change=True") == 0
    # The finished run, rerun unchanged: nothing to train, and summary.json keeps its metrics.
    summary = tmp_path / "run" / "summary.json"
    final = json.loads(summary.read_text())["stages"]["sft"]
    assert final["step"] == 2 and np.isfinite(final["loss"])
    assert _cli(tmp_path / "run") == 0
    assert json.loads(summary.read_text())["stages"]["sft"] == final


def test_cli_nonfinite_update_exits_1_in_one_line(tmp_path, capsys):
    code = _cli(tmp_path / "run", "optimizer.learning_rate=1e39", "optimizer.warmup_steps=0")
    assert code == 1
    line = _error_line(capsys)
    assert line.startswith("fbjax train: error: step 1 of sft: the update (learning rate "
                           "1e+39) made parameters or optimizer state non-finite")
    assert ck.list_steps(tmp_path / "run" / "sft" / "checkpoints") == []  # nothing was saved
