"""Log-probs computed at scored positions only equal those computed everywhere.

The reference is the plain computation: full float32 logits at every position, log-softmax,
the token's entry read at its predictor. It is compared with the chunked, gathered path on
packed and prefix-shared batches (values and gradients), with a pass size that holds every
row's scored positions and one that needs several passes, and through the real training step.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.data import packing
from fbjax.models.decoder import Decoder
from fbjax.objectives import logprobs
from fbjax.train import presets
from fbjax.train import step as steplib
from fbjax.train.objective import apply_objective
from tests.train.helpers import random_groups, tiny_llama

VOCAB, D = 48, 16


def _batch(share_prefix: bool) -> dict:
    groups = random_groups(8, completions=2, vocab=VOCAB, seed=7, prompt_range=(3, 14),
                           completion_range=(1, 9))
    batch, used = packing.pack(groups, seq_len=64, num_rows=3, num_slots=8,
                               share_prefix=share_prefix)
    assert used >= 5  # several examples a row
    return batch


def _reference(hidden, w, tokens, predictor, mask):
    logp = jax.nn.log_softmax(hidden @ w, axis=-1)  # [B, L, V]
    pred = jnp.clip(predictor, 0, tokens.shape[1] - 1)
    at_pred = jnp.take_along_axis(logp, pred[..., None], axis=1)
    picked = jnp.take_along_axis(at_pred, tokens[..., None], axis=2)[..., 0]
    return jnp.where(mask != 0, picked, 0.0)


@pytest.mark.parametrize(
    "share_prefix,max_scored",
    [(False, 32), (True, 32), (True, 8), (True, None)],
    ids=["packed-one_pass", "prefix_shared-one_pass", "prefix_shared-passes", "prefix_shared-all"],
)
def test_scored_positions_match_reference(share_prefix, max_scored):
    batch = _batch(share_prefix)
    tokens, predictor = jnp.asarray(batch["tokens"]), jnp.asarray(batch["predictor"])
    # Signed token weights: a negative weight is scored too.
    mask = jnp.asarray(batch["loss_mask"]) * jnp.where(jnp.arange(64) % 5 == 0, -1.0, 1.0)
    most = int((batch["loss_mask"] != 0).sum(axis=1).max())
    assert (max_scored is None) or (max_scored >= most) == (max_scored == 32), most
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(k1, (*tokens.shape, D))
    w = jax.random.normal(k2, (D, VOCAB))
    cot = jax.random.normal(k3, tokens.shape)

    def ours(h, w):
        out = logprobs.token_logps(h, w, tokens, predictor, chunk_size=20, loss_mask_BxL=mask,
                                   max_scored=max_scored)
        return jnp.sum(out * cot), out

    def ref(h, w):
        out = _reference(h, w, tokens, predictor, mask)
        return jnp.sum(out * cot), out

    (_, got), g_got = jax.jit(jax.value_and_grad(ours, (0, 1), has_aux=True))(hidden, w)
    (_, want), g_want = jax.jit(jax.value_and_grad(ref, (0, 1), has_aux=True))(hidden, w)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(got)[np.asarray(mask) == 0] == 0)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("row_groups", [1, 2, 4, 6])
def test_pooled_rows_match_reference_on_padded_rows(row_groups):
    # TRL's layout: one sequence a row, padded; row 0 has 40 scored positions, the others 2 to
    # 12. Per row, a pass of 8 needs 5 passes; pooled, the group's total sets the count.
    # row_groups=6 does not divide 4 rows: gcd(6, 4) = 2 groups.
    rng = np.random.default_rng(3)
    b, length = 4, 48
    tokens = jnp.asarray(rng.integers(0, VOCAB, (b, length)))
    predictor = jnp.broadcast_to(jnp.arange(length) - 1, (b, length))
    mask = np.zeros((b, length), np.float32)
    mask[0, 6:46] = 1
    for row, (start, n) in enumerate([(3, 2), (10, 12), (20, 5)], 1):
        mask[row, start:start + n] = -0.5 if row == 2 else 1.0
    mask = jnp.asarray(mask)
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    hidden = jax.random.normal(k1, (b, length, D))
    w = jax.random.normal(k2, (D, VOCAB))
    cot = jax.random.normal(k3, (b, length))

    def ours(h, w, groups):
        out = logprobs.token_logps(h, w, tokens, predictor, chunk_size=20, loss_mask_BxL=mask,
                                   max_scored=8, row_groups=groups)
        return jnp.sum(out * cot), out

    def ref(h, w):
        out = _reference(h, w, tokens, predictor, mask)
        return jnp.sum(out * cot), out

    grad = jax.value_and_grad
    (_, got), g_got = jax.jit(grad(lambda h, w: ours(h, w, row_groups), (0, 1),
                                   has_aux=True))(hidden, w)
    (_, want), g_want = jax.jit(grad(ref, (0, 1), has_aux=True))(hidden, w)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(got)[np.asarray(mask) == 0] == 0)
    for x, y in zip(g_got, g_want):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_scored_order_is_a_stable_partition():
    mask = jnp.asarray([[0, 1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]], jnp.float32)
    index, scored = logprobs.scored_order(mask)
    np.testing.assert_array_equal(index, [[1, 4, 5, 0, 2, 3, 6], [0, 1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(scored, [[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])


def test_batch_shards_counts_the_row_axes():
    from fbjax import sharding as fsh

    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
    assert fsh.batch_shards(mesh, fsh.batch_sharding(mesh, 2)) == 1
    fake = type("M", (), {"shape": {"data": 2, "fsdp": 4, "tensor": 8}})()
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert fsh.batch_shards(fake, type("S", (), {"spec": spec})()) == 8
    assert fsh.batch_shards(fake, type("S", (), {"spec": jax.sharding.PartitionSpec("data")})()) == 2
    assert fsh.batch_shards(fake, type("S", (), {"spec": jax.sharding.PartitionSpec()})()) == 1


def test_one_chunk_vocabulary_matches_reference():
    # chunk >= vocab still goes through the (single-chunk) scan.
    k1, k2 = jax.random.split(jax.random.key(1))
    h, w = jax.random.normal(k1, (2, 5, D)), jax.random.normal(k2, (D, VOCAB))
    got = logprobs.chunked_logsumexp(h, w, chunk_size=8192)
    np.testing.assert_allclose(got, jax.nn.logsumexp(h @ w, axis=-1), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("cap,dtype", [(None, jnp.float32), (3.0, jnp.float32),
                                       (None, jnp.bfloat16)], ids=["plain", "softcap", "bf16"])
def test_logsumexp_gradients_match_autodiff_of_full_logits(cap, dtype):
    # The hand-written backward (softmax per recomputed chunk) against jax.grad of the plain
    # computation, with a cotangent per position; 37 words in chunks of 8 pad the last chunk.
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    h = jax.random.normal(k1, (3, 7, 16)).astype(dtype)
    w = jax.random.normal(k2, (16, 37)).astype(dtype)
    cot = jax.random.normal(k3, (3, 7))

    def full(h, w):
        z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return jnp.sum(jax.nn.logsumexp(logprobs.softcap(z, cap), axis=-1) * cot)

    def ours(h, w):
        return jnp.sum(logprobs.chunked_logsumexp(h, w, chunk_size=8, cap=cap) * cot)

    got, want = jax.grad(ours, (0, 1))(h, w), jax.grad(full, (0, 1))(h, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for x, y in zip(got, want):
        assert x.dtype == dtype
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   atol=tol * float(np.abs(np.asarray(y, np.float32)).max()),
                                   rtol=tol)


def test_bf16_hidden_accumulates_in_float32():
    k1, k2 = jax.random.split(jax.random.key(2))
    h = jax.random.normal(k1, (2, 5, 64)).astype(jnp.bfloat16)
    w = jax.random.normal(k2, (64, VOCAB))
    got = logprobs.chunked_logsumexp(h, w, chunk_size=16)
    assert got.dtype == jnp.float32
    # Exact products of the bf16-rounded inputs, summed in float32.
    want = jax.nn.logsumexp(h.astype(jnp.float32) @ w.astype(jnp.bfloat16).astype(jnp.float32),
                            axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_max_scored_bound_rounds_up():
    mask = np.zeros((2, 400), np.float32)
    mask[0, :130] = 1
    mask[1, 5:9] = -1
    assert logprobs.max_scored_bound(mask, multiple=128) == 256
    assert logprobs.max_scored_bound(mask[1:], multiple=128) == 128


def test_train_step_equal_with_and_without_bound():
    batch = {k: jnp.asarray(v) for k, v in _batch(True).items()}
    config = tiny_llama(vocab_size=VOCAB)
    model = Decoder(config)
    params = nn.unbox(steplib.init_params_boxed(model, jax.random.key(0)))
    ref = nn.unbox(steplib.init_params_boxed(model, jax.random.key(1)))
    objective = presets.dpo(beta=0.1)

    def loss(p, max_scored):
        stats = steplib.sequence_stats(model, p, ref, batch, need_reference=True, chunk_size=16,
                                       max_scored=max_scored)
        total, count, _, _ = apply_objective(objective, stats, None, jax.random.key(0))
        return total / count, (stats.logps, stats.ref_logps)

    outs = [jax.jit(jax.value_and_grad(lambda p, m=m: loss(p, m), has_aux=True))(params)
            for m in (None, 32)]
    (l0, (lp0, rp0)), g0 = outs[0]
    (l1, (lp1, rp1)), g1 = outs[1]
    np.testing.assert_allclose(l1, l0, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(lp1, lp0, atol=1e-4, rtol=1e-6)  # sums of ~10 log-probs ~ -4
    np.testing.assert_allclose(rp1, rp0, atol=1e-4, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()), rtol=1e-5)


def test_scored_head_is_on_by_default_at_an_eighth_of_the_row():
    from fbjax.train.config import TrainConfig

    assert TrainConfig(seq_len=1024).scored_bound == 128
    assert TrainConfig(seq_len=1000).scored_bound == 128  # an eighth, rounded up to 32
    assert TrainConfig(seq_len=358).scored_bound == 64
    assert TrainConfig(seq_len=256).scored_bound == 32
    assert TrainConfig(seq_len=128).scored_bound is None  # short rows: one plain pass
    assert TrainConfig(seq_len=96, max_scored_tokens=32).scored_bound == 32
    assert TrainConfig(seq_len=1024, max_scored_tokens=300).scored_bound == 300
    assert TrainConfig(seq_len=1024, max_scored_tokens=2048).scored_bound is None
    assert TrainConfig(seq_len=1024, scored_head=False).scored_bound is None


def test_loop_passes_the_bound_to_the_step(monkeypatch):
    from fbjax import sharding as fsh
    from fbjax.train import loop
    from fbjax.train.config import TrainConfig
    from fbjax.train.stream import batch_stream
    from tests.train.helpers import job

    seen = []
    real = steplib.make_train_step

    def spy(**kwargs):
        seen.append(kwargs["max_scored"])
        return real(**kwargs)

    monkeypatch.setattr(steplib, "make_train_step", spy)
    config = tiny_llama(vocab_size=VOCAB, max_seq_len=256)
    groups = random_groups(16, completions=2, vocab=VOCAB, seed=1)
    train = TrainConfig(steps=1, batch=2, seq_len=256, log_every=1)
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, -1, 1)), jax.devices()[:1])
    stream = batch_stream(train, config, groups, seed=0, mesh=mesh)
    params = steplib.init_params(Decoder(config), jax.random.key(0), mesh, fsh.RULES_FSDP_TP)
    loop.train(job(config, presets.sft(), train), stream, params, mesh=mesh,
               progress=False)
    assert seen == [32]
