"""fbjax.checkpoint: retention, cross-mesh restore, corruption fallback, exact resumption."""

from __future__ import annotations

import logging
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fbjax import checkpoint as ck
from fbjax import sharding as fsh
from fbjax.models import config as mc
from fbjax.models.decoder import Decoder
from fbjax.objectives import supervised
from fbjax.train import inputs
from fbjax.train import step as st
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig, make_optimizer

RULES = fsh.RULES_FSDP_TP


def _init_obj_state():
    return {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}


def _prepare(arrays, state, rng, *_):  # (later versions also pass hparams)
    # A running statistic that also consumes the step's rng, so resuming exactly requires both
    # objective_state and the PRNG key to round-trip.
    noise = 1e-3 * jax.random.normal(rng, ())
    mean = jax.lax.stop_gradient(jnp.mean(arrays["policy_logps"])) + noise
    return {}, {"mean": 0.9 * state["mean"] + 0.1 * mean, "count": state["count"] + 1}


def _batch(seed: int, rows: int = 8, length: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ar = np.arange(length, dtype=np.int32)
    return dict(
        tokens=rng.integers(0, 64, (rows, length)).astype(np.int32),
        positions=np.tile(ar, (rows, 1)),
        segment_ids=np.ones((rows, length), np.int32),
        branch_ids=np.zeros((rows, length), np.int32),
        predictor=np.tile(ar - 1, (rows, 1)),
        loss_mask=np.concatenate(
            [np.zeros((rows, 4)), np.ones((rows, length - 4))], 1
        ).astype(np.float32),
        slot_ids=np.zeros((rows, length), np.int32),
        slot_valid=np.ones((rows, 1), np.float32),
    )


@pytest.fixture(scope="module")
def run():
    """A tiny model trained for 2 steps on a (2, 2, 2) mesh, with reference and objective state."""
    model = Decoder(
        mc.llama(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                 mlp_dim=64)
    )
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2), 10)
    objective = Objective(
        loss=supervised.nll, inputs=inputs.sequences, prepare=_prepare, init_state=_init_obj_state
    )
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(2, 2, 2)))
    params = st.init_params(model, jax.random.key(0), mesh, RULES)
    state, shardings = st.create_state(
        params, model=model, optimizer=optimizer, objective=objective, rng=jax.random.key(1),
        mesh=mesh, rules=RULES, reference_params=params,
    )
    batches = [_batch(i) for i in range(6)]
    step_fn = st.make_train_step(
        model=model, objective=objective, optimizer=optimizer, mesh=mesh, rules=RULES,
        state_sharding=shardings, batch_sharding=st.batch_shardings(mesh, batches[0]),
    )
    for b in batches[:2]:
        state, _ = step_fn(state, b)
    return types.SimpleNamespace(
        model=model, optimizer=optimizer, objective=objective, mesh=mesh, state=state,
        shardings=shardings, step_fn=step_fn, batches=batches,
    )


def _extras(step: int) -> dict:
    return {
        "data_state": {"epoch": 0, "position": 8 * step, "shards": [1, 2, 3]},
        "config": {"name": "tiny", "lr": 0.01, "nested": {"x": None, "flag": True}},
        "metrics": {"loss": 4.15 + 1e-9 * step, "grad_norm": 0.1, "tiny": 1e-300},
        "reference": {"fingerprint": "sha256:abc123"},
    }


def _abstract(state):
    return jax.eval_shape(lambda s: s, state)


def _host_leaves(state):
    """Every leaf as raw bytes (PRNG keys as their key data), for bitwise comparison."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = np.asarray(x)
        out.append((jax.tree_util.keystr(path), x.dtype, x.shape, x.tobytes()))
    return out


def _save_steps(directory, state, steps, **config):
    config = {"keep": None, "async_save": False, **config}
    with ck.open(directory, ck.CheckpointConfig(**config)) as mgr:
        for s in steps:
            assert ck.save(mgr, s, state, extras=_extras(s), force=True)


# ----------------------------------------------------------------------------- cadence, retention


def test_retention_extras_and_async(run, tmp_path):
    config = ck.CheckpointConfig(every_steps=1, keep=2, keep_milestones_every=2, async_save=True)
    with ck.open(tmp_path, config) as mgr:
        for s in range(1, 6):
            assert mgr.should_save(s)
            assert ck.save(mgr, s, run.state, extras=_extras(s))
        assert not ck.save(mgr, 5, run.state, extras=_extras(5))  # same step: nothing to do
        mgr.wait()
        assert (tmp_path / "5" / ck.MARKER).exists()
    assert ck.list_steps(tmp_path) == [2, 4, 5]
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 4, 5]
    for s in (2, 4, 5):
        assert ck.read_extras(tmp_path, s) == _extras(s)
    assert ck.read_extras(tmp_path) == _extras(5)


def test_milestone_tuple_and_keep_one(run, tmp_path):
    config = ck.CheckpointConfig(keep=1, keep_milestones_every=(2,), async_save=True)
    with ck.open(tmp_path, config) as mgr:
        for s in range(1, 5):
            ck.save(mgr, s, run.state, extras=_extras(s), force=True)
    # Step 3 was the newest committed checkpoint when step 4 was saved, so it survives until the
    # next save: a good checkpoint is never deleted while a newer one is being written.
    assert ck.list_steps(tmp_path) == [2, 3, 4]


def test_should_save_cadence(tmp_path):
    now = [0.0]
    config = ck.CheckpointConfig(every_steps=3, every_minutes=1.0)
    with ck.open(tmp_path, config, clock=lambda: now[0]) as mgr:
        assert [s for s in range(0, 10) if mgr.should_save(s)] == [3, 6, 9]
        now[0] = 59.0
        assert not mgr.should_save(4)
        now[0] = 60.0
        assert mgr.should_save(4)
        assert mgr.should_save(5, now=61.0)
    with pytest.raises(ValueError):
        ck.CheckpointConfig(every_steps=0)


# ----------------------------------------------------------------------------- cross-mesh restore


@pytest.mark.parametrize("shape,num_devices", [((1, 1, 1), 1), ((4, 2, 1), 8)])
def test_restore_onto_another_mesh(run, tmp_path, shape, num_devices):
    _save_steps(tmp_path, run.state, [2])
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=shape), jax.devices()[:num_devices])
    shardings = st.state_shardings(
        run.model, run.optimizer, run.objective, mesh, RULES, with_reference=True
    )
    restored, extras, step = ck.restore_latest(tmp_path, _abstract(run.state), shardings)
    assert step == 2 and extras == _extras(2)
    assert _host_leaves(restored) == _host_leaves(run.state)
    for x, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert x.sharding == want
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert restored.rng.dtype == run.state.rng.dtype
    assert restored.ref_params is not None and restored.objective_state["count"] == 2
    # restore_at and the manager form give the same thing.
    again, _ = ck.restore_at(tmp_path, 2, _abstract(run.state), shardings)
    assert _host_leaves(again) == _host_leaves(run.state)


def test_mismatched_state_raises(run, tmp_path):
    _save_steps(tmp_path, run.state, [1])
    abstract = _abstract(run.state.replace(ref_params=None))
    shardings = run.shardings.replace(ref_params=None)
    with pytest.raises(ValueError, match="not in requested state"):
        ck.restore_latest(tmp_path, abstract, shardings)


def test_empty_directory(run, tmp_path):
    assert ck.restore_latest(tmp_path / "nothing", _abstract(run.state), run.shardings) is None
    assert ck.list_steps(tmp_path / "nothing") == []


# ----------------------------------------------------------------------------- corruption


def _largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    return max(files, key=os.path.getsize)


def _restore(run, directory):
    return ck.restore_latest(directory, _abstract(run.state), run.shardings)


def test_truncated_array_file_falls_back(run, tmp_path, caplog):
    _save_steps(tmp_path, run.state, [1, 2, 3])
    victim = _largest_file(tmp_path / "3" / "state")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    before = sorted(os.listdir(tmp_path / "2" / "state"))
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        restored, extras, step = _restore(run, tmp_path)
    assert step == 2 and extras == _extras(2)
    assert _host_leaves(restored) == _host_leaves(run.state)
    assert any("step 3" in r.getMessage() and "bytes" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(tmp_path / "2" / "state")) == before  # the good one is untouched
    assert (tmp_path / "3").exists()  # and nothing is deleted on restore
    assert ck.list_steps(tmp_path) == [1, 2]
    assert "bytes" in ck.step_status(tmp_path)[3]

    # Training resumes from step 2 and saves step 3 again: the corrupt one is replaced.
    with ck.open(tmp_path, ck.CheckpointConfig(keep=None, async_save=True)) as mgr:
        assert ck.save(mgr, 3, restored, extras=_extras(3), force=True)
    assert ck.list_steps(tmp_path) == [1, 2, 3]
    assert _restore(run, tmp_path)[2] == 3


def test_missing_marker_is_incomplete(run, tmp_path, caplog):
    _save_steps(tmp_path, run.state, [1, 2])
    os.remove(tmp_path / "2" / ck.MARKER)
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
        assert ck.read_extras(tmp_path) == _extras(1)
    assert any("step 2" in r.getMessage() and ck.MARKER in r.getMessage() for r in caplog.records)
    assert ck.list_steps(tmp_path) == [1]
    with pytest.raises(ck.CheckpointError):
        ck.read_extras(tmp_path, 2)


def test_garbage_extras_detected(run, tmp_path, caplog):
    _save_steps(tmp_path, run.state, [1, 2])
    extras_file = _largest_file(tmp_path / "2" / "extras")
    text = open(extras_file).read()
    with open(extras_file, "w") as f:
        f.write(text.replace('"lr": 0.01', '"lr": 0.02'))  # valid JSON, same size, wrong content
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
    assert any("step 2" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


def test_garbage_extras_detected_without_file_hashes(run, tmp_path, caplog):
    # With no file hashes, the extras' own checksum (checked after reading) still catches it.
    _save_steps(tmp_path, run.state, [1, 2], hash_max_bytes=0)
    extras_file = _largest_file(tmp_path / "2" / "extras")
    text = open(extras_file).read()
    with open(extras_file, "w") as f:
        f.write(text.replace('"position": 16', '"position": 99'))  # same length
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
        assert ck.read_extras(tmp_path) == _extras(1)
    assert any("extras do not match" in r.getMessage() for r in caplog.records)


# Orbax leaves a tensorstore callback behind when a read fails ("Event loop is closed").
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_orbax_read_error_falls_back(run, tmp_path, caplog):
    # Without file hashes the static check passes; flipped bytes in the OCDBT b-tree/data files
    # then make Orbax (tensorstore's CRC-32C) fail, or the fingerprints differ.
    _save_steps(tmp_path, run.state, [1, 2], hash_max_bytes=0)
    data_dir = tmp_path / "2" / "state" / "d"
    for name in os.listdir(data_dir):
        with open(data_dir / name, "r+b") as f:
            data = bytearray(f.read())
            for i in range(len(data) // 2, len(data) // 2 + 16):
                data[i] ^= 0x5A
            f.seek(0)
            f.write(data)
    assert ck.step_status(tmp_path)[2] is None  # sizes unchanged: only a read can tell
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
    assert any(
        "step 2" in r.getMessage()
        and ("Orbax failed" in r.getMessage() or "fingerprint" in r.getMessage())
        for r in caplog.records
    )


def test_silent_array_corruption_caught_by_fingerprint(run, tmp_path, caplog, monkeypatch):
    # Simulates storage that returns wrong bytes without an error (undetectable by file sizes
    # or by Orbax): one element of one array changes between save and restore.
    _save_steps(tmp_path, run.state, [1, 2], hash_max_bytes=0)
    real_restore = ocp.CheckpointManager.restore

    def flipping_restore(self, step, *args, **kwargs):
        out = real_restore(self, step, *args, **kwargs)
        if step == 2 and "state" in out:
            kernel = out["state"].params["layer_0"]["mlp"]["up"]["kernel"]
            bumped = kernel.at[0, 0].set(jnp.nextafter(kernel[0, 0], jnp.inf))
            out["state"].params["layer_0"]["mlp"]["up"]["kernel"] = bumped
        return out

    monkeypatch.setattr(ocp.CheckpointManager, "restore", flipping_restore)
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
    assert any("fingerprint" in r.getMessage() and "up" in r.getMessage() for r in caplog.records)


def test_all_corrupt_raises(run, tmp_path):
    _save_steps(tmp_path, run.state, [1])
    os.remove(tmp_path / "1" / ck.MARKER)
    with pytest.raises(ck.CheckpointError, match="no usable checkpoint"):
        _restore(run, tmp_path)


# ----------------------------------------------------------------------------- exact resumption


def test_resume_is_bitwise_identical(run, tmp_path):
    state = jax.tree.map(lambda x: x.copy(), run.state)  # the step donates its input
    with ck.open(tmp_path, ck.CheckpointConfig(every_steps=2, async_save=True)) as mgr:
        for i in range(2, 6):
            state, _ = run.step_fn(state, run.batches[i])
            # The async save returns once arrays are on host, so the next step may donate them.
            ck.save(mgr, int(state.step), state, extras=_extras(int(state.step)))
    assert ck.list_steps(tmp_path) == [4, 6]

    resumed, _ = ck.restore_at(tmp_path, 4, _abstract(state), run.shardings)
    for i in range(4, 6):
        resumed, _ = run.step_fn(resumed, run.batches[i])
    assert int(resumed.step) == 6
    assert _host_leaves(resumed) == _host_leaves(state)


# ----------------------------------------------------------------------------- preemption


def test_preemption_flag_restores_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with ck.install_preemption_handler() as flag:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the Python-level handler runs at the next bytecode boundary
            if flag.requested:
                break
        assert flag.requested and flag.agreed() and flag.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous


def test_run_checkpointer_saves_on_sigterm(run, tmp_path):
    class Stream:
        def __init__(self):
            self.position = 0

        def get_state(self):
            return {"position": self.position}

        def set_state(self, s):
            self.position = s["position"]

    stream = Stream()
    config = ck.CheckpointConfig(every_steps=100)
    rc = ck.RunCheckpointer(tmp_path, config, experiment_config={"name": "tiny"})
    try:
        stream.position = 7
        rc.maybe_save(2, run.state, stream, {"loss": 1.0})
        assert not rc.preempted and ck.list_steps(tmp_path) == []
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            if rc._flag.requested:
                break
        rc.maybe_save(2, run.state, stream, {"loss": 1.0})
        assert rc.preempted and ck.list_steps(tmp_path) == [2]
    finally:
        rc.close()
    assert ck.read_extras(tmp_path)["data_state"] == {"position": 7}

    fresh = Stream()
    rc = ck.RunCheckpointer(tmp_path, config, handle_sigterm=False)
    try:
        restored = rc.restore(run.state, run.shardings, fresh)
    finally:
        rc.close()
    assert fresh.position == 7 and int(restored.step) == 2


# ----------------------------------------------------------------------------- reliability


def test_nonfinite_state_is_never_saved(run, tmp_path):
    poisoned = run.state.replace(
        params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), run.state.params))
    with ck.open(tmp_path, ck.CheckpointConfig(keep=None, async_save=False)) as mgr:
        with pytest.raises(ck.CheckpointError, match=r"refusing to save checkpoint step 3 .*NaN/Inf"
                                                     r".*params/"):
            ck.save(mgr, 3, poisoned, extras=_extras(3), force=True)
    assert not (tmp_path / "3").exists()


def test_one_checkpoint_error_with_one_line_messages():
    from fbjax.models import hf

    assert hf.CheckpointError is ck.CheckpointError and issubclass(ck.CheckpointError, ValueError)
    assert str(ck.CheckpointError("Orbax failed:\n  detail\n\tmore")) == "Orbax failed: detail more"


def _config(lr=3e-3, seed=0):
    return {"name": "tiny", "optimizer": {"learning_rate": lr, "b1": 0.9},
            "train": {"seed": seed, "steps": 10}, "mesh": {"shape": [1, 2, 1]}}


def test_config_change_on_resume_is_refused_unless_allowed(run, tmp_path, caplog):
    config = ck.CheckpointConfig(every_steps=100, async_save=False)
    rc = ck.RunCheckpointer(tmp_path, config, experiment_config=_config(), handle_sigterm=False)
    try:
        rc.save_now(2, run.state, None, {"loss": 1.0})
    finally:
        rc.close()

    # The same config (tuples and lists alike) resumes silently.
    same = dict(_config(), mesh={"shape": (1, 2, 1)})
    rc = ck.RunCheckpointer(tmp_path, config, experiment_config=same, handle_sigterm=False)
    try:
        assert int(rc.restore(run.state, run.shardings).step) == 2
    finally:
        rc.close()

    changed = _config(lr=0.5, seed=1)
    rc = ck.RunCheckpointer(tmp_path, config, experiment_config=changed, handle_sigterm=False)
    try:
        with pytest.raises(ck.CheckpointError) as e:
            rc.restore(run.state, run.shardings)
    finally:
        rc.close()
    message = str(e.value)
    assert "\n" not in message and f"checkpoint step 2 in {tmp_path}" in message
    assert "optimizer.learning_rate: 0.003 -> 0.5; train.seed: 0 -> 1." in message
    assert "b1" not in message and "allow_config_change=True" in message

    rc = ck.RunCheckpointer(tmp_path, config, experiment_config=changed, handle_sigterm=False,
                            allow_config_change=True)
    try:
        with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
            assert int(rc.restore(run.state, run.shardings).step) == 2
    finally:
        rc.close()
    assert any("optimizer.learning_rate: 0.003 -> 0.5" in r.getMessage() for r in caplog.records)
    assert ck.config_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": [2]}}) == ["a.c: (absent) -> [2]"]


def test_nonfinite_checkpoint_from_before_the_rule_is_rejected(run, tmp_path, caplog,
                                                                monkeypatch):
    # Writes step 2 with an Inf parameter as older versions could (the save-time check is
    # bypassed; the fingerprints are right), then checks that restore falls back to step 1.
    _save_steps(tmp_path, run.state, [1])
    from fbjax.checkpoint import manager

    real = manager.integrity.leaf_table
    monkeypatch.setattr(manager.integrity, "leaf_table", lambda tree: (real(tree)[0], {}))
    poisoned = run.state.replace(
        params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), run.state.params))
    _save_steps(tmp_path, poisoned, [2])
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        assert _restore(run, tmp_path)[2] == 1
    assert any("step 2" in r.getMessage() and "NaN/Inf" in r.getMessage() for r in caplog.records)
    assert "NaN/Inf" in ck.step_status(tmp_path, verify=True)[2]
