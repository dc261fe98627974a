"""Precomputed reference log-probs: equal to the in-step reference, cached, and guarded."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from fbjax import sharding as fsh
from fbjax.data import packing
from fbjax.models.decoder import Decoder
from fbjax.train import presets, reference
from fbjax.train import step as steplib
from fbjax.train.objective import apply_objective
from tests.train.helpers import random_groups, tiny_llama

CFG = tiny_llama()
MODEL = Decoder(CFG)
DPO = presets.dpo(beta=0.1)
# Small enough that several groups are really truncated (prompts up to 12, completions up to
# 10 tokens), so the test also checks that the cache is computed on the truncated tokens.
TRUNCATION = reference.Truncation(seq_len=28, max_prompt_len=6, max_completion_len=7,
                                  share_prefix=True)
# The whole vocabulary in one chunk: the chunked path is tested elsewhere, and one matmul
# compiles faster than a scan.
CHUNK = 64
# Rows of every test batch (padded needs two per pair); packed and prefix-shared batches then
# share one shape, so the jitted loss compiles once for both.
ROWS = 20


def _mesh():
    return fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])


@functools.lru_cache(maxsize=None)
def _params(seed):
    """Random parameters of the model's shapes, drawn on the host (no init compile)."""
    shapes = jax.eval_shape(lambda r: nn.unbox(steplib.init_params_boxed(MODEL, r)),
                            jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (rng.normal(0.0, 0.2, s.shape) + (s.ndim == 1)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def setup():
    groups = random_groups(10, completions=2, vocab=64, seed=11, prompt_range=(2, 13),
                           completion_range=(1, 11))
    policy, ref_params = _params(0), _params(1)  # a reference != policy makes the test sharp
    # num_rows=2, num_slots=4: several forward batches, so the slot -> group mapping is exercised.
    ref = reference.compute_reference_logps(ref_params, CFG, groups, truncation=TRUNCATION,
                                            num_rows=2, num_slots=4, chunk_size=CHUNK)
    return groups, policy, ref_params, ref


@jax.jit
def _loss_and_grads(params, ref_params, batch):
    def loss(p):
        stats = steplib.sequence_stats(MODEL, p, ref_params, batch, need_reference=True,
                                       chunk_size=CHUNK)
        loss_sum, count, _, _ = apply_objective(DPO, stats, None, jax.random.key(0))
        return loss_sum / count

    return jax.value_and_grad(loss)(params)


def _layout(groups, layout, fields=()):
    if layout == "padded":
        batch, used = packing.padded(groups, seq_len=TRUNCATION.seq_len, num_rows=ROWS,
                                     fields=fields)
    else:
        batch, used = packing.pack(groups, seq_len=TRUNCATION.seq_len, num_rows=ROWS,
                                   num_slots=2, share_prefix=layout == "prefix_shared",
                                   fields=fields)
    assert used == len(groups)
    return batch


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_cached_equals_in_step_reference(setup, layout):
    groups, policy, ref_params, ref = setup
    # The stream truncates again (identity on truncated groups); do the same here.
    truncated = TRUNCATION.apply(groups)
    assert [len(c) for g in truncated for c in g.completions] != [
        len(c) for g in groups for c in g.completions], "the truncation should cut something"
    cached = TRUNCATION.apply(reference.attach(groups, ref))
    loss_a, grads_a = _loss_and_grads(policy, ref_params, _layout(truncated, layout))
    loss_b, grads_b = _loss_and_grads(policy, None, _layout(cached, layout, ("ref_logps",)))
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6),
                 grads_a, grads_b)


def test_train_step_with_cache_holds_no_reference(setup):
    """The real jitted step: no reference params in the state, same update as in-step."""
    groups, policy, ref_params, ref = setup
    mesh, rules = _mesh(), fsh.RULES_FSDP_TP
    opt = optax.sgd(0.5)
    results = []
    for with_cache in (False, True):
        gs = TRUNCATION.apply(reference.attach(groups, ref) if with_cache else groups)
        batch = _layout(gs, "prefix_shared", ("ref_logps",) if with_cache else ())
        state, shardings = steplib.create_state(
            policy, model=MODEL, optimizer=opt, objective=DPO, rng=jax.random.key(0), mesh=mesh,
            rules=rules, reference_params=None if with_cache else ref_params)
        assert (state.ref_params is None) == with_cache
        fn = steplib.make_train_step(model=MODEL, objective=DPO, optimizer=opt, mesh=mesh,
                                     rules=rules, state_sharding=shardings,
                                     batch_sharding=steplib.batch_shardings(mesh, batch),
                                     chunk_size=CHUNK)
        state, metrics = fn(state, batch)
        assert state.ref_params is None if with_cache else state.ref_params is not None
        results.append((float(metrics["loss"][0]), jax.device_get(state.params)))
    (loss_a, params_a), (loss_b, params_b) = results
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6),
                 params_a, params_b)


def test_cache_hit_does_not_recompute(setup, tmp_path, monkeypatch):
    groups, _, ref_params, ref = setup
    calls = []
    compute = reference.compute_reference_logps

    def counting(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(reference, "compute_reference_logps", counting)
    kw = dict(truncation=TRUNCATION, chunk_size=CHUNK, num_rows=2, num_slots=4)
    first = reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    second = reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    assert len(calls) == 1
    assert len(list(tmp_path.glob("*.npz"))) == 1
    for a, b, c in zip(first, second, ref):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-6)
    # Attached groups hash like the plain ones (slot fields do not change the sums): still a hit.
    reference.load_or_compute(tmp_path, ref_params, CFG, reference.attach(groups, ref), **kw)
    assert len(calls) == 1
    # With the default (content-addressed) key, changed data is simply a new file.
    reference.load_or_compute(tmp_path, ref_params, CFG, groups[:-1], **kw)
    assert len(calls) == 2
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_changed_model_or_data_is_rejected(setup, tmp_path):
    groups, _, ref_params, _ = setup
    kw = dict(key="hh-ref", truncation=TRUNCATION, chunk_size=CHUNK, num_rows=2, num_slots=4)
    reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    path = str(tmp_path / "hh-ref.npz")

    other = jax.tree.map(np.copy, ref_params)
    jax.tree.leaves(other)[0].reshape(-1)[0] += 1e-3  # one changed weight: another model
    with pytest.raises(reference.ReferenceCacheMismatch, match="reference parameters") as e:
        reference.load_or_compute(tmp_path, other, CFG, groups, **kw)
    msg = str(e.value)
    assert path in msg
    old = reference._metadata(ref_params, CFG, groups, TRUNCATION)
    new = reference._metadata(other, CFG, groups, TRUNCATION)
    assert reference.reference_fingerprint(old)[:16] in msg
    assert reference.reference_fingerprint(new)[:16] in msg

    changed = list(groups)
    g = changed[3]
    changed[3] = packing.Group(g.prompt, (g.completions[0][::-1].copy(), g.completions[1]))
    if np.array_equal(changed[3].completions[0], g.completions[0]):  # a palindrome: bump a token
        changed[3].completions[0][0] = (changed[3].completions[0][0] % 63) + 1
    with pytest.raises(reference.ReferenceCacheMismatch, match="data changed") as e:
        reference.load_or_compute(tmp_path, ref_params, CFG, changed, **kw)
    assert reference.fingerprint_groups(changed)[:16] in str(e.value)
    assert reference.fingerprint_groups(groups)[:16] in str(e.value)

    with pytest.raises(reference.ReferenceCacheMismatch, match="truncation"):
        reference.load_or_compute(tmp_path, ref_params, CFG, groups, key="hh-ref",
                                  truncation=None, chunk_size=CHUNK, num_rows=2, num_slots=4)


def _rewrite_values(path, change):
    """The cache file with its values changed by ``change`` and its metadata kept."""
    with np.load(path) as f:
        meta, values, counts = f["meta"], f["values"].copy(), f["counts"]
    change(values)
    with open(path, "wb") as f:
        np.savez(f, meta=meta, values=values, counts=counts)


@pytest.mark.parametrize("damage", ["shift", "nan"])
def test_damaged_values_are_recomputed(setup, tmp_path, monkeypatch, damage):
    groups, _, ref_params, ref = setup
    calls = []
    compute = reference.compute_reference_logps
    monkeypatch.setattr(reference, "compute_reference_logps",
                        lambda *a, **k: calls.append(1) or compute(*a, **k))
    kw = dict(key="ref", truncation=TRUNCATION, chunk_size=CHUNK, num_rows=2, num_slots=4)
    reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    path = tmp_path / "ref.npz"

    def shift(v):
        v[3] += 5.0

    def nan(v):
        v[3] = np.nan

    _rewrite_values(path, shift if damage == "shift" else nan)
    with np.load(path) as f:  # the damage is really there
        assert not np.array_equal(f["values"], np.concatenate(ref))
    got = reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    assert len(calls) == 2  # detected and recomputed ...
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    again = reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    assert len(calls) == 2  # ... and the file replaced: the next read is a hit
    for a, b in zip(again, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_a_cache"])
def test_unreadable_cache_is_one_line_error(setup, tmp_path, damage):
    groups, _, ref_params, _ = setup
    kw = dict(key="ref", truncation=TRUNCATION, chunk_size=CHUNK, num_rows=2, num_slots=4)
    reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    path = tmp_path / "ref.npz"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    else:  # a valid npz of something else
        with open(path, "wb") as f:
            np.savez(f, weights=np.ones(3))
    with pytest.raises(reference.ReferenceCacheError) as e:
        reference.load_or_compute(tmp_path, ref_params, CFG, groups, **kw)
    message = str(e.value)
    assert str(path) in message and "\n" not in message


def test_nonfinite_reference_is_not_cached(setup, tmp_path):
    groups, _, ref_params, _ = setup
    broken = jax.tree.map(lambda x: np.full_like(x, np.nan), ref_params)
    kw = dict(key="ref", truncation=TRUNCATION, chunk_size=CHUNK, num_rows=2, num_slots=4)
    with pytest.raises(reference.ReferenceCacheError, match="not finite"):
        reference.load_or_compute(tmp_path, broken, CFG, groups, **kw)
    assert not (tmp_path / "ref.npz").exists()


def test_fingerprints_depend_on_values_only():
    params = _params(0)
    on_device = jax.device_put(params)
    assert reference.fingerprint_params(params) == reference.fingerprint_params(on_device)
    assert reference.fingerprint_params(params) != reference.fingerprint_params(_params(1))
    groups = random_groups(3, completions=2, vocab=64, seed=0)
    assert reference.fingerprint_groups(groups) == reference.fingerprint_groups(
        [packing.Group(g.prompt.astype(np.int64), g.completions, {"weights": (1.0, 1.0)})
         for g in groups])
    assert reference.fingerprint_groups(groups) != reference.fingerprint_groups(groups[::-1])


def test_attach_checks_counts():
    groups = random_groups(2, completions=2, vocab=64, seed=0)
    with pytest.raises(ValueError, match="2 completions but 1"):
        reference.attach(groups, [np.zeros(2), np.zeros(1)])
    with pytest.raises(ValueError, match="1 reference arrays for 2 groups"):
        reference.attach(groups, [np.zeros(2)])


def test_for_config_feeds_the_training_stream(setup, tmp_path):
    """The recipe path: cached sums attached, truncated as the stream truncates, and carried
    by ``fbjax.train.stream.batch_stream`` batches to exactly the slots they belong to."""
    from fbjax.train.config import TrainConfig
    from fbjax.train.stream import batch_stream
    from tests.train.helpers import job

    groups, _, ref_params, _ = setup
    train = TrainConfig(seq_len=TRUNCATION.seq_len, batch=4, slots_per_row=4,
                        max_prompt_len=TRUNCATION.max_prompt_len,
                        max_completion_len=TRUNCATION.max_completion_len, logprob_chunk=CHUNK)
    config = job(CFG, DPO, train, name="ref")
    attached = reference.for_config(config, groups, ref_params, cache_dir=tmp_path, num_rows=2,
                                    num_slots=4)
    batch = next(batch_stream(train, CFG, attached, seed=0))
    assert "ref_logps" in batch
    fn = reference._sums_fn(CFG, 4, CHUNK, None, fsh.RULES_FSDP_TP)
    direct = np.asarray(fn(ref_params, {k: v for k, v in batch.items()
                                        if k in (*steplib.TOKEN_KEYS, "slot_valid")}))
    valid = batch["slot_valid"] > 0
    assert valid.sum() >= 4
    np.testing.assert_allclose(batch["ref_logps"][valid], direct[valid], rtol=1e-5, atol=1e-5)
