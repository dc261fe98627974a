"""From final hidden states to the log-prob arrays every objective reads.

Token log-probs are computed in float32 and chunked over the vocabulary: for each position we need
only ``logsumexp`` of the logits and the logit of the scored token. The first is accumulated over
vocabulary chunks with a running max; the second is a dot product between the hidden state and
one output-embedding column. Peak memory is ``[B, L, chunk]`` instead of ``[B, L, V]``.

The scored token at position t is read from the output distribution at ``predictor[t]`` (t - 1
in ordinary rows, the last prompt token for the first token of a prefix-shared completion).

Only scored positions need the LM head. Given the loss mask and a static pass size
(``max_scored``), the hidden states are gathered at the scored positions' predictors before the
projection, ``max_scored`` a row per pass, and passes with nothing scored are skipped: in a
packed, prefix-shared batch under half of the positions are scored, and the head is a large
share of a small model's FLOPs. With ``row_groups``, rows are pooled (per batch shard) before
the positions are ordered, so one long row no longer sets the number of passes for all.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# The vocabulary chunk of the log-softmax, the one default every caller shares (training, the
# reference cache, evaluation, feedback providers; ``train.logprob_chunk`` sets it per run):
# memory grows with the chunk, not with the vocabulary.
CHUNK = 8192


def softcap(logits: Array, cap: float | None) -> Array:
    """``cap * tanh(logits / cap)`` (Gemma 2's final-logit soft-capping); identity for None."""
    return logits if cap is None else cap * jnp.tanh(logits / cap)


def _vocab_chunks(w_DxV: Array, chunk_size: int) -> tuple[Array, Array]:
    """``w`` as ``[C, D, chunk]`` (the last chunk padded) and ``[C, chunk]`` validity."""
    d, vocab = w_DxV.shape
    chunk = min(chunk_size, vocab)
    num_chunks = -(-vocab // chunk)
    pad = num_chunks * chunk - vocab
    w = jnp.moveaxis(jnp.pad(w_DxV, ((0, 0), (0, pad))).reshape(d, num_chunks, chunk), 1, 0)
    valid = (jnp.arange(num_chunks * chunk) < vocab).reshape(num_chunks, chunk)
    return w, valid


def _chunk_raw_logits(hidden_NxD: Array, w_chunk: Array) -> Array:
    """One chunk's logits before soft-capping: the hidden states' dtype in, float32 out."""
    return jnp.einsum("nd,dv->nv", hidden_NxD, w_chunk.astype(hidden_NxD.dtype),
                      preferred_element_type=jnp.float32)


def _lse_forward(hidden_NxD: Array, w_DxV: Array, chunk_size: int, cap: float | None) -> Array:
    w, valid = _vocab_chunks(w_DxV, chunk_size)

    def step(carry, xs):
        run_max, run_sum = carry
        w_chunk, valid_chunk = xs
        logits = jnp.where(valid_chunk, softcap(_chunk_raw_logits(hidden_NxD, w_chunk), cap),
                           -jnp.inf)
        m = jnp.max(logits, axis=-1)
        s = jnp.sum(jnp.exp(logits - m[..., None]), axis=-1)
        new_max = jnp.maximum(run_max, m)
        run_sum = run_sum * jnp.exp(run_max - new_max) + s * jnp.exp(m - new_max)
        return (new_max, run_sum), None

    n = hidden_NxD.shape[0]
    init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)))
    (run_max, run_sum), _ = jax.lax.scan(step, init, (w, valid))
    return run_max + jnp.log(run_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lse(hidden_NxD: Array, w_DxV: Array, chunk_size: int, cap: float | None) -> Array:
    return _lse_forward(hidden_NxD, w_DxV, chunk_size, cap)


def _lse_fwd(hidden_NxD, w_DxV, chunk_size, cap):
    lse = _lse_forward(hidden_NxD, w_DxV, chunk_size, cap)
    return lse, (hidden_NxD, w_DxV, lse)


def _lse_bwd(chunk_size, cap, res, g_N):
    """d lse / d logits = softmax(logits): per chunk, recompute the logits, ``dz = g p``
    (times the soft-cap's derivative ``1 - tanh^2``), then ``dh += dz W_c^T``, ``dW_c = h^T dz``.
    """
    hidden, w_DxV, lse = res
    w, valid = _vocab_chunks(w_DxV, chunk_size)
    g = g_N.astype(jnp.float32)

    def step(dh, xs):
        w_chunk, valid_chunk = xs
        raw = _chunk_raw_logits(hidden, w_chunk)
        logits = softcap(raw, cap)
        dz = jnp.where(valid_chunk, jnp.exp(logits - lse[:, None]), 0.0) * g[:, None]
        if cap is not None:
            dz = dz * (1.0 - jnp.square(jnp.tanh(raw / cap)))
        dz = dz.astype(hidden.dtype)
        dh = dh + jnp.einsum("nv,dv->nd", dz, w_chunk.astype(hidden.dtype),
                             preferred_element_type=jnp.float32)
        dw = jnp.einsum("nd,nv->dv", hidden, dz, preferred_element_type=jnp.float32)
        return dh, dw.astype(w_DxV.dtype)

    dh, dw = jax.lax.scan(step, jnp.zeros(hidden.shape, jnp.float32), (w, valid))
    d, vocab = w_DxV.shape
    dw = jnp.moveaxis(dw, 0, 1).reshape(d, -1)[:, :vocab]
    return dh.astype(hidden.dtype), dw


_lse.defvjp(_lse_fwd, _lse_bwd)


def chunked_logsumexp(hidden_BxLxD: Array, w_DxV: Array, *, chunk_size: int = CHUNK,
                      cap: float | None = None) -> Array:
    """``logsumexp(softcap(hidden @ w, cap), axis=-1)`` in float32 without materialising all V
    logits.

    Forward: a scan over vocabulary chunks with a running (max, sum) pair; the last chunk is
    padded with -inf logits, which contribute nothing. The scan is taken even when the
    vocabulary fits in one chunk, so no float32 ``[..., V]`` array outlives the forward. The
    matmul reads the hidden states in their own dtype (bf16 on accelerators) and accumulates in
    float32.

    Backward (``jax.custom_vjp``): the gradient of logsumexp is the softmax, so each chunk's
    logits are recomputed once and ``p = exp(logits - lse)`` feeds the two gradient matmuls;
    only ``lse`` is saved. Differentiating the forward scan instead recomputes the chunk's
    max and sum and carries the max's gradient (zero in total, through an equality mask):
    measured on this CPU, 11x the forward's time for 4,096 positions x 8,000 words.
    """
    d = w_DxV.shape[0]
    # One leading dim: with several, the weight gradient contracts over all of them and XLA's
    # CPU compiler takes a path three times slower for this function's backward pass
    # (measured with jax 0.10.2, [16, 280, 256] hidden states, 8,000 words); on accelerators the
    # reshape is a free bitcast.
    lead = hidden_BxLxD.shape[:-1]
    lse = _lse(hidden_BxLxD.reshape(-1, d), w_DxV, chunk_size, cap)
    return lse.reshape(lead)


def _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, index_BxM, *, chunk_size,
              cap=None):
    """``[B, M]`` log-probs of the tokens at row positions ``index``: the LM head runs on the
    M gathered predictor states only."""
    length = tokens_BxL.shape[1]
    pred = jnp.clip(jnp.take_along_axis(predictor_BxL, index_BxM, axis=1), 0, length - 1)
    h_pred = jnp.take_along_axis(hidden_BxLxD, pred[..., None], axis=1)  # [B, M, D]
    lse = chunked_logsumexp(h_pred, w_DxV, chunk_size=chunk_size, cap=cap)
    tok = jnp.take_along_axis(tokens_BxL, index_BxM, axis=1)
    w_tok = jnp.take(w_DxV.T, tok, axis=0).astype(h_pred.dtype)  # [B, M, D]
    target = jnp.einsum("bmd,bmd->bm", h_pred, w_tok, preferred_element_type=jnp.float32)
    return softcap(target, cap) - lse


def scored_order(loss_mask_BxL: Array) -> tuple[Array, Array]:
    """Each row's positions with the scored ones first (``loss_mask != 0``; weights may be
    negative), in row order: ``(index [B, L], scored [B, L])``."""
    scored = loss_mask_BxL != 0
    # A stable partition by prefix counts, linear in the row (a sort is not, and the rows of
    # pooled groups are long): scored position t goes to slot (scored before t), the others
    # after every scored one.
    n_scored = scored.sum(axis=1, keepdims=True, dtype=jnp.int32)
    before = jnp.cumsum(scored, axis=1, dtype=jnp.int32) - scored
    unscored_before = jnp.arange(scored.shape[1], dtype=jnp.int32) - before
    slot = jnp.where(scored, before, n_scored + unscored_before)
    rows = jnp.arange(scored.shape[0])[:, None]
    positions = jnp.broadcast_to(jnp.arange(scored.shape[1], dtype=jnp.int32), scored.shape)
    index = jnp.zeros_like(positions).at[rows, slot].set(positions, unique_indices=True)
    return index, jnp.take_along_axis(scored, index, axis=1)


def token_logps(
    hidden_BxLxD: Array,
    w_DxV: Array,
    tokens_BxL: Array,
    predictor_BxL: Array,
    *,
    chunk_size: int = CHUNK,
    loss_mask_BxL: Array | None = None,
    max_scored: int | None = None,
    row_groups: int | None = None,
    cap: float | None = None,
) -> Array:
    """``log p(tokens[t] | context)`` read from the distribution at ``predictor[t]``, ``[B, L]``.

    ``cap``: the model's final-logit soft-cap (``ModelConfig.final_logit_softcap``), applied to
    every logit before the softmax.

    Without ``loss_mask_BxL``, every position is computed; positions whose predictor is out of
    range (the first token of a row) get an arbitrary finite value, and callers mask them.

    With ``loss_mask_BxL`` the result is 0 wherever the mask is 0. With ``max_scored`` too, the
    hidden states are gathered at the predictors of the scored positions *before* the output
    projection, ``max_scored`` positions a row per pass, so the LM head (``2 D V`` FLOPs a
    position, forward) runs only there: each row's positions are ordered scored-first and cut
    into passes of ``max_scored`` (a static shape), and a pass holding no scored position in any
    row is skipped (``lax.cond``). A bound at least each row's scored count gives one pass; a
    row over it takes more passes, with the same values.

    ``row_groups`` (k): the rows are pooled into k groups of consecutive rows (``gcd(k, B)``,
    so that it divides B) and each group's positions are ordered scored-first together, a pass
    holding ``max_scored`` x (rows in the group) of them. The passes then follow the group's
    total of scored positions, not its longest row's: TRL's padded layout, one sequence a
    row, has a few rows with many scored positions and many with few. Training passes the
    number of batch shards, so that a group never spans two devices. None: every row alone.
    """
    b, length = tokens_BxL.shape
    if (row_groups is not None and loss_mask_BxL is not None and max_scored is not None
            and math.gcd(row_groups, b) < b):
        groups = math.gcd(row_groups, b)
        rows = b // groups
        # Row j of a group starts at j * L of the pooled row; predictors move with it.
        offset = (jnp.arange(b, dtype=predictor_BxL.dtype) % rows)[:, None] * length
        pooled = token_logps(
            hidden_BxLxD.reshape(groups, rows * length, -1), w_DxV,
            tokens_BxL.reshape(groups, -1),
            (jnp.clip(predictor_BxL, 0, length - 1) + offset).reshape(groups, -1),
            chunk_size=chunk_size, loss_mask_BxL=loss_mask_BxL.reshape(groups, -1),
            max_scored=max_scored * rows, cap=cap)
        return pooled.reshape(b, length)
    if loss_mask_BxL is None or max_scored is None or max_scored >= length:
        every = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        values = _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, every,
                           chunk_size=chunk_size, cap=cap)
        return values if loss_mask_BxL is None else jnp.where(loss_mask_BxL != 0, values, 0.0)
    index, scored = scored_order(loss_mask_BxL)
    passes = -(-length // max_scored)
    pad = passes * max_scored - length
    index = jnp.pad(index, ((0, 0), (0, pad)))
    scored = jnp.pad(scored, ((0, 0), (0, pad)))

    def by_pass(x):  # [B, passes * M] -> [passes, B, M]
        return jnp.moveaxis(x.reshape(b, passes, max_scored), 1, 0)

    def one_pass(_, xs):
        idx, keep = xs
        values = jax.lax.cond(
            jnp.any(keep),
            lambda: _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, idx,
                              chunk_size=chunk_size, cap=cap),
            lambda: jnp.zeros(idx.shape, jnp.float32),
        )
        return None, jnp.where(keep, values, 0.0)

    _, values = jax.lax.scan(one_pass, None, (by_pass(index), by_pass(scored)))
    values = jnp.moveaxis(values, 0, 1).reshape(b, -1)
    rows = jnp.arange(b)[:, None]
    # Padding entries point at position 0 with value 0: adding them changes nothing.
    return jnp.zeros((b, length), jnp.float32).at[rows, index].add(values)


def max_scored_bound(loss_mask_BxL, *, multiple: int = 128) -> int:
    """Host-side bound for ``max_scored``: the most scored positions in any row of the given
    (numpy) loss masks, rounded up to ``multiple`` so that nearby batches share one compile."""
    most = int(np.max(np.sum(np.asarray(loss_mask_BxL) != 0, axis=-1), initial=0))
    return max(multiple, -(-most // multiple) * multiple)


def sequence_sums(values_BxL: Array, mask_BxL: Array, slot_ids_BxL: Array, num_slots: int) -> Array:
    """Per-slot sums ``[B, K]`` of ``values * mask``, a scatter-add local to each row.

    (A one-hot contraction would build ``[B, L, K]``; K grows with the row in packed layouts,
    which made that term quadratic in the row length.)
    """
    def row(values, slots):
        return jax.ops.segment_sum(values, slots, num_segments=num_slots)

    return jax.vmap(row)(values_BxL * mask_BxL, slot_ids_BxL)


def token_kl_and_entropy(
    hidden_BxLxD: Array,
    w_DxV: Array,
    ref_hidden_BxLxD: Array,
    ref_w_DxV: Array,
    predictor_BxL: Array,
    *,
    chunk_size: int = CHUNK,
) -> tuple[Array, Array]:
    """Full-vocabulary ``KL(ref || policy)`` and policy entropy of the distribution that predicts
    each token (read at ``predictor[t]``, as :func:`token_logps`), ``[B, L]`` each, float32.

    With logits ``z`` (policy) and ``r`` (reference) and their log-normalisers ``A``, ``A_r``:
    ``KL = sum_v p_r(v) (r_v - z_v) - A_r + A`` and ``H = A - sum_v p(v) z_v``; the two sums run
    over vocabulary chunks, so memory stays ``[B, L, chunk]``. Gradients flow through the policy
    terms; pass a stop-gradient reference.
    """
    d, vocab = w_DxV.shape
    lead = hidden_BxLxD.shape[:-1]
    # [B * L, D]: see chunked_logsumexp for why one leading dim.
    hidden = hidden_BxLxD.astype(jnp.float32).reshape(-1, d)
    ref_hidden = ref_hidden_BxLxD.astype(jnp.float32).reshape(-1, d)
    lse = chunked_logsumexp(hidden, w_DxV, chunk_size=chunk_size)
    ref_lse = chunked_logsumexp(ref_hidden, ref_w_DxV, chunk_size=chunk_size)
    num_chunks = -(-vocab // chunk_size)
    size = min(chunk_size, vocab)
    pad = num_chunks * size - vocab

    def chunks(w):
        w = jnp.pad(w, ((0, 0), (0, pad))).reshape(d, num_chunks, size)
        return jnp.moveaxis(w, 1, 0)  # [C, D, chunk]

    valid = (jnp.arange(num_chunks * size) < vocab).reshape(num_chunks, size)

    @jax.checkpoint
    def chunk_sums(w_chunk, ref_w_chunk, valid_chunk):
        z = hidden @ w_chunk.astype(jnp.float32)
        r = ref_hidden @ ref_w_chunk.astype(jnp.float32)
        p = jnp.where(valid_chunk, jnp.exp(z - lse[..., None]), 0.0)
        p_ref = jnp.where(valid_chunk, jnp.exp(r - ref_lse[..., None]), 0.0)
        return jnp.sum(p_ref * (r - z), axis=-1), jnp.sum(p * z, axis=-1)

    def step(carry, xs):
        kl_acc, ent_acc = carry
        kl_c, ent_c = chunk_sums(*xs)
        return (kl_acc + kl_c, ent_acc + ent_c), None

    zeros = jnp.zeros(lse.shape, jnp.float32)
    (cross, expected_z), _ = jax.lax.scan(
        step, (zeros, zeros), (chunks(w_DxV), chunks(ref_w_DxV), valid)
    )
    kl = (cross - ref_lse + lse).reshape(lead)
    entropy = (lse - expected_z).reshape(lead)
    pred = jnp.clip(predictor_BxL, 0, predictor_BxL.shape[1] - 1)
    return jnp.take_along_axis(kl, pred, axis=1), jnp.take_along_axis(entropy, pred, axis=1)
