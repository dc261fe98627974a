"""From final hidden states to the log-prob arrays every objective reads.

Token log-probs are computed in float32 and chunked over the vocabulary: for each position we need
only ``logsumexp`` of the logits and the logit of the scored token. The first is accumulated over
vocabulary chunks with a running max; the second is a dot product between the hidden state and
one output-embedding column. Peak memory is ``[B, L, chunk]`` instead of ``[B, L, V]``.

The scored token at position t is read from the output distribution at ``predictor[t]`` (t - 1
in ordinary rows, the last prompt token for the first token of a prefix-shared completion).

Only scored positions need the LM head. Given the loss mask and a static bound on scored
positions per row, the hidden states are gathered at those positions' predictors before the
projection: in a packed, prefix-shared batch about a quarter of the positions are scored, and
the head is most of a small model's FLOPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def chunked_logsumexp(hidden_BxLxD: Array, w_DxV: Array, *, chunk_size: int = 8192) -> Array:
    """``logsumexp(hidden @ w, axis=-1)`` in float32 without materialising all V logits.

    Uses a scan over vocabulary chunks with a running (max, sum) pair; the last chunk is padded
    with -inf logits, which contribute nothing. The scan is taken even when the vocabulary fits
    in one chunk: its chunk logits are recomputed in the backward pass rather than kept, so no
    float32 ``[..., V]`` array outlives the forward. The matmul reads the hidden states in
    their own dtype (bf16 on accelerators) and accumulates in float32.
    """
    d, vocab = w_DxV.shape
    chunk = min(chunk_size, vocab)
    num_chunks = -(-vocab // chunk)
    pad = num_chunks * chunk - vocab
    w = jnp.pad(w_DxV, ((0, 0), (0, pad))).reshape(d, num_chunks, chunk)
    w = jnp.moveaxis(w, 1, 0)  # [C, D, chunk]
    valid = (jnp.arange(num_chunks * chunk) < vocab).reshape(num_chunks, chunk)
    hidden = hidden_BxLxD

    # Recomputed in the backward pass instead of saving every chunk's logits.
    @jax.checkpoint
    def chunk_stats(w_chunk, valid_chunk):
        logits = jnp.einsum("...d,dv->...v", hidden, w_chunk.astype(hidden.dtype),
                            preferred_element_type=jnp.float32)
        logits = jnp.where(valid_chunk, logits, -jnp.inf)
        m = jnp.max(logits, axis=-1)
        return m, jnp.sum(jnp.exp(logits - m[..., None]), axis=-1)

    def step(carry, xs):
        run_max, run_sum = carry
        m, s = chunk_stats(*xs)
        new_max = jnp.maximum(run_max, m)
        run_sum = run_sum * jnp.exp(run_max - new_max) + s * jnp.exp(m - new_max)
        return (new_max, run_sum), None

    init = (jnp.full(hidden.shape[:-1], -jnp.inf), jnp.zeros(hidden.shape[:-1]))
    (run_max, run_sum), _ = jax.lax.scan(step, init, (w, valid))
    return run_max + jnp.log(run_sum)


def _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, index_BxM, *, chunk_size):
    """``[B, M]`` log-probs of the tokens at row positions ``index``: the LM head runs on the
    M gathered predictor states only."""
    length = tokens_BxL.shape[1]
    pred = jnp.clip(jnp.take_along_axis(predictor_BxL, index_BxM, axis=1), 0, length - 1)
    h_pred = jnp.take_along_axis(hidden_BxLxD, pred[..., None], axis=1)  # [B, M, D]
    lse = chunked_logsumexp(h_pred, w_DxV, chunk_size=chunk_size)
    tok = jnp.take_along_axis(tokens_BxL, index_BxM, axis=1)
    w_tok = jnp.take(w_DxV.T, tok, axis=0).astype(h_pred.dtype)  # [B, M, D]
    target = jnp.einsum("bmd,bmd->bm", h_pred, w_tok, preferred_element_type=jnp.float32)
    return target - lse


def scored_index(loss_mask_BxL: Array, max_scored: int) -> tuple[Array, Array, Array]:
    """The first ``max_scored`` positions of each row with ``loss_mask != 0``, in row order.

    Returns ``(index [B, M], valid [B, M], fits [])``: ``valid`` marks real entries (the rest
    point at position 0), ``fits`` whether every row's scored positions were all taken.
    Weights may be negative (signed token weights), so "scored" is ``!= 0``.
    """
    scored = loss_mask_BxL != 0
    index = jnp.argsort(~scored, axis=1, stable=True)[:, :max_scored].astype(jnp.int32)
    valid = jnp.take_along_axis(scored, index, axis=1)
    fits = jnp.all(jnp.sum(scored, axis=1) <= max_scored)
    return jnp.where(valid, index, 0), valid, fits


def token_logps(
    hidden_BxLxD: Array,
    w_DxV: Array,
    tokens_BxL: Array,
    predictor_BxL: Array,
    *,
    chunk_size: int = 8192,
    loss_mask_BxL: Array | None = None,
    max_scored: int | None = None,
) -> Array:
    """``log p(tokens[t] | context)`` read from the distribution at ``predictor[t]``, ``[B, L]``.

    Without ``loss_mask_BxL``, every position is computed; positions whose predictor is out of
    range (the first token of a row) get an arbitrary finite value, and callers mask them.

    With ``loss_mask_BxL`` the result is 0 wherever the mask is 0, and with ``max_scored`` too,
    the hidden states are gathered at the predictors of at most ``max_scored`` scored positions
    per row *before* the output projection, so the LM head (``2 D V`` FLOPs a position, forward)
    runs only there. A static bound keeps shapes fixed under jit; a batch with a row of more
    scored positions takes the all-positions path instead (``lax.cond``, same values).
    """
    b, length = tokens_BxL.shape
    every = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))

    def all_positions(_=None):
        return _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, every,
                         chunk_size=chunk_size)

    if loss_mask_BxL is None:
        return all_positions()
    scored = loss_mask_BxL != 0
    if max_scored is None or max_scored >= length:
        return jnp.where(scored, all_positions(), 0.0)
    index, valid, fits = scored_index(loss_mask_BxL, max_scored)

    def gathered(_):
        values = _logps_at(hidden_BxLxD, w_DxV, tokens_BxL, predictor_BxL, index,
                           chunk_size=chunk_size)
        rows = jnp.arange(b)[:, None]
        return jnp.zeros((b, length), jnp.float32).at[rows, index].add(
            jnp.where(valid, values, 0.0))

    return jax.lax.cond(fits, gathered, lambda _: jnp.where(scored, all_positions(), 0.0), None)


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
