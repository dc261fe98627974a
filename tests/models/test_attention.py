"""Blockwise and gathered (sparse) attention equal the dense reference, values and gradients,
on real layouts.

Rows come from ``fbjax.data.packing`` (several examples per row, and prefix-shared rows where
two completions read one prompt copy), so the mask exercises segments, padding and the branch
rule; sliding windows and Gemma-2 style logit soft-capping are checked on the same rows. Block
sizes are small (8, 16) so that each row spans several blocks and whole blocks are skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.data import packing
from fbjax.models import attention
from fbjax.models.config import AttentionImpl
from fbjax.models.decoder import Decoder
from tests.train.helpers import random_groups, tiny_llama

H, K, D = 4, 2, 8


def _rows(share_prefix: bool, seq_len: int = 64):
    groups = random_groups(10, completions=2, vocab=32, seed=3, prompt_range=(2, 12),
                           completion_range=(1, 10))
    batch, used = packing.pack(groups, seq_len=seq_len, num_rows=3, num_slots=8,
                               share_prefix=share_prefix)
    assert used >= 6  # several examples per row
    if share_prefix:
        assert (batch["branch_ids"] > 1).any()
    return {k: jnp.asarray(batch[k]) for k in ("segment_ids", "branch_ids", "positions")}


def _qkv(b, t, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, H, D))
    k = jax.random.normal(ks[1], (b, t, K, D))
    v = jax.random.normal(ks[2], (b, t, K, D))
    w = jax.random.normal(ks[3], (b, t, H, D))  # a fixed cotangent
    return q, k, v, w


def _value_and_grads(impl, rows, *, window, softcap, block, sparse_block=128):
    b, t = rows["segment_ids"].shape
    q, k, v, w = _qkv(b, t)
    real = (rows["segment_ids"] > 0)[..., None, None]  # padding queries are read by nothing

    def f(q, k, v):
        out = attention.attend(q, k, v, **rows, scale=0.35, sliding_window=window,
                               softcap=softcap, implementation=impl, block_size=block,
                               sparse_block_size=sparse_block)
        return jnp.sum(jnp.where(real, out * w, 0.0)), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return jnp.where(real, out, 0.0), grads


@pytest.mark.parametrize("share_prefix", [False, True], ids=["packed", "prefix_shared"])
@pytest.mark.parametrize(
    "window,softcap", [(None, None), (5, None), (None, 2.0), (7, 1.5)],
    ids=["causal", "window", "softcap", "window_softcap"],
)
def test_blockwise_matches_dense(share_prefix, window, softcap):
    rows = _rows(share_prefix)
    dense_out, dense_grads = _value_and_grads(
        AttentionImpl.DENSE, rows, window=window, softcap=softcap, block=512)
    for block in (8, 16):
        out, grads = _value_and_grads(
            AttentionImpl.BLOCKWISE, rows, window=window, softcap=softcap, block=block)
        np.testing.assert_allclose(out, dense_out, atol=1e-5, rtol=1e-5)
        for g, ref in zip(grads, dense_grads):
            np.testing.assert_allclose(g, ref, atol=1e-5, rtol=1e-5)


def _assert_close(got, want):
    out, grads = got
    np.testing.assert_allclose(out, want[0], atol=1e-5, rtol=1e-5)
    for g, ref in zip(grads, want[1]):
        np.testing.assert_allclose(g, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_prefix", [False, True], ids=["packed", "prefix_shared"])
@pytest.mark.parametrize(
    "window,softcap", [(None, None), (5, None), (None, 2.0), (7, 1.5)],
    ids=["causal", "window", "softcap", "window_softcap"],
)
def test_sparse_matches_dense(share_prefix, window, softcap):
    rows = _rows(share_prefix, seq_len=60)  # not a multiple of the blocks: padded invisibly
    dense = _value_and_grads(AttentionImpl.DENSE, rows, window=window, softcap=softcap, block=512)
    for sparse_block in (8, 16):
        _assert_close(_value_and_grads(AttentionImpl.SPARSE, rows, window=window,
                                       softcap=softcap, block=16, sparse_block=sparse_block),
                      dense)


def test_sparse_past_its_capacity_takes_the_blockwise_path(monkeypatch):
    rows = _rows(True, seq_len=60)
    b, n = rows["segment_ids"].shape[0], 64 // 8
    live = attention._live_pairs(
        *(jnp.pad(rows[k], ((0, 0), (0, 4))) for k in ("segment_ids", "branch_ids",
                                                       "positions")), 8, None)
    # Scores of 10 pairs of 8x8 blocks, 4 heads: fewer than the live pairs, so the call must
    # go past every capacity to the blockwise path (16-token blocks there).
    monkeypatch.setattr(attention, "SPARSE_SCORE_BYTES", 10 * H * 8 * 8 * 4)
    caps = attention._capacities(b, n, H, 8)
    assert max(caps) == 10 < int(live.sum())
    dense = _value_and_grads(AttentionImpl.DENSE, rows, window=3, softcap=2.0, block=512)
    _assert_close(_value_and_grads(AttentionImpl.SPARSE, rows, window=3, softcap=2.0, block=16,
                                   sparse_block=8), dense)


def test_capacities_fall_geometrically_from_the_causal_pairs_or_the_bounds():
    # 2 rows of 4 blocks: 20 causal pairs; levels 20/1.5^l rounded up, l = 0..5.
    assert attention._capacities(2, 4, 4, 128) == [3, 4, 6, 9, 14, 20]
    big = attention._capacities(8, 64, 32, 128)  # 16,640 causal pairs; 512 MiB of scores
    assert big[-1] == attention.SPARSE_SCORE_BYTES // (32 * 128 * 128 * 4) == 256
    long = attention._capacities(1, 512, 2, 64)  # 131,328 causal pairs, 16,384 by bytes
    assert long[-1] == 512 * attention.SPARSE_KEY_BLOCKS == 8192


def test_live_pairs_are_per_row_and_blind_to_padding():
    # Row 0: one segment of 5 tokens, then padding; row 1: segments 1 and 2, block 4.
    seg = jnp.array([[1] * 5 + [0] * 7, [1] * 4 + [2] * 8])
    zeros = jnp.zeros_like(seg)
    live = np.asarray(attention._live_pairs(seg, zeros, zeros, 4, None))
    np.testing.assert_array_equal(live[0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(live[1], [[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_row_not_a_multiple_of_the_block_is_padded_invisibly():
    rows = _rows(True, seq_len=60)
    dense_out, dense_grads = _value_and_grads(
        AttentionImpl.DENSE, rows, window=None, softcap=None, block=512)
    out, grads = _value_and_grads(AttentionImpl.BLOCKWISE, rows, window=None, softcap=None, block=16)
    np.testing.assert_allclose(out, dense_out, atol=1e-5, rtol=1e-5)
    for g, ref in zip(grads, dense_grads):
        np.testing.assert_allclose(g, ref, atol=1e-5, rtol=1e-5)


def test_live_blocks_skip_other_segments_and_branches():
    # One row, block 4: [seg 1: prompt x4 | chosen x4 | rejected x4][seg 2: 4 tokens].
    seg = jnp.array([[1] * 12 + [2] * 4])
    br = jnp.array([[0] * 4 + [1] * 4 + [2] * 4 + [0] * 4])
    pos = jnp.array([[0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 0, 1, 2, 3]])
    live = np.asarray(attention._live_blocks(seg, br, pos, 4, None))
    expected = np.array([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],  # rejected queries skip the chosen block
        [0, 0, 0, 1],  # segment 2 skips segment 1
    ], bool)
    np.testing.assert_array_equal(live, expected)
    # A window of 1 (each token sees itself): the prompt block (positions 0-3) is out of reach
    # of the completion blocks (4-7); with a window of 2, position 4 still sees position 3.
    live_1 = np.asarray(attention._live_blocks(seg, br, pos, 4, 1))
    np.testing.assert_array_equal(live_1, np.eye(4, dtype=bool))
    live_2 = np.asarray(attention._live_blocks(seg, br, pos, 4, 2))
    np.testing.assert_array_equal(live_2, expected)


def test_decoder_blockwise_and_sparse_match_dense():
    rows = _rows(True)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, rows["segment_ids"].shape))
    cot = jax.random.normal(jax.random.key(1), (*tokens.shape, 32))  # a fixed cotangent
    outs, grads = [], []
    for impl in (AttentionImpl.DENSE, AttentionImpl.BLOCKWISE, AttentionImpl.SPARSE):
        model = Decoder(tiny_llama(attention_impl=impl, attention_block_size=16,
                                   attention_sparse_block_size=8))
        params = model.init(jax.random.key(0), tokens, rows["positions"], rows["segment_ids"],
                            rows["branch_ids"])

        def f(p, model=model):
            h, _ = model.apply(p, tokens, rows["positions"], rows["segment_ids"],
                               rows["branch_ids"])
            return jnp.sum(jnp.where((rows["segment_ids"] > 0)[..., None], h * cot, 0.0)), h

        (_, h), g = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
        outs.append(h)
        grads.append(g)
    real = (rows["segment_ids"] > 0)[..., None]
    for h, g in zip(outs[1:], grads[1:]):
        np.testing.assert_allclose(jnp.where(real, h, 0), jnp.where(real, outs[0], 0),
                                   atol=1e-5, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads[0])):
            # float32 sums in another order: errors scale with the leaf's largest entry (~30).
            np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()), rtol=1e-5)


def test_kernels_match_dense_in_interpret_mode():
    """The TPU (splash) and GPU (Triton) kernel wiring, run by the Pallas interpreter on CPU:
    segment ids, GQA, scale, window and soft-capping mean the same as in the dense path. (This
    checks the meaning of the calls, not the kernels' compilation or speed on a device.)"""
    seg = np.repeat([1, 2, 3, 0], [70, 30, 24, 12]).astype(np.int32)[None]
    pos = np.concatenate([np.arange(70), np.arange(30), np.arange(24), np.zeros(12)])
    rows = {"segment_ids": jnp.asarray(seg), "branch_ids": jnp.zeros_like(jnp.asarray(seg)),
            "positions": jnp.asarray(pos.astype(np.int32)[None])}
    ks = jax.random.split(jax.random.key(2), 4)
    t = seg.shape[1]  # two query blocks of 128 after padding; 2 query heads on 1 key head
    q, w = (jax.random.normal(r, (1, t, 2, 64)) for r in ks[:2])
    k, v = (jax.random.normal(r, (1, t, 1, 64)) for r in ks[2:])
    real = (rows["segment_ids"] > 0)[..., None, None]

    def run(fn):
        def f(q, k, v):
            out = fn(q, k, v)
            return jnp.sum(jnp.where(real, out * w, 0.0)), jnp.where(real, out, 0.0)
        return jax.value_and_grad(f, (0, 1, 2), has_aux=True)(q, k, v)

    def check(kernel, window, softcap):
        (_, want), g_want = run(lambda q, k, v: attention.attend(
            q, k, v, **rows, scale=0.125, sliding_window=window, softcap=softcap,
            implementation=AttentionImpl.DENSE))
        (_, got), g_got = run(kernel)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        for a, b in zip(g_got, g_want):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    seg_ids = rows["segment_ids"]
    check(lambda q, k, v: attention._splash(q, k, v, seg_ids, scale=0.125, sliding_window=9,
                                            softcap=3.0, block_size=128, interpret=True), 9, 3.0)
    check(lambda q, k, v: attention._triton(q, k, v, seg_ids, scale=0.125, block_size=64,
                                            interpret=True), None, None)
