"""From final hidden states to the log-prob arrays every objective reads.

Token log-probs are computed in float32 and chunked over the vocabulary: for each position we need
only ``logsumexp`` of the logits and the logit of the scored token. The first is accumulated over
vocabulary chunks with a running max; the second is a dot product between the hidden state and
one output-embedding column. Peak memory is ``[B, L, chunk]`` instead of ``[B, L, V]``.

The scored token at position t is read from the output distribution at ``predictor[t]`` (t - 1
in ordinary rows, the last prompt token for the first token of a prefix-shared completion).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def softcap(logits: Array, cap: float | None) -> Array:
    """``cap * tanh(logits / cap)`` (Gemma 2's final-logit soft-capping); identity for None."""
    return logits if cap is None else cap * jnp.tanh(logits / cap)


def chunked_logsumexp(hidden_BxLxD: Array, w_DxV: Array, *, chunk_size: int = 8192,
                      cap: float | None = None) -> Array:
    """``logsumexp(softcap(hidden @ w, cap), axis=-1)`` in float32 without materialising all V
    logits.

    Uses a scan over vocabulary chunks with a running (max, sum) pair; the last chunk is padded
    with -inf logits, which contribute nothing.
    """
    hidden = hidden_BxLxD.astype(jnp.float32)
    d, vocab = w_DxV.shape
    if vocab <= chunk_size:
        return jax.nn.logsumexp(softcap(hidden @ w_DxV.astype(jnp.float32), cap), axis=-1)
    num_chunks = -(-vocab // chunk_size)
    pad = num_chunks * chunk_size - vocab
    w = jnp.pad(w_DxV, ((0, 0), (0, pad))).reshape(d, num_chunks, chunk_size)
    w = jnp.moveaxis(w, 1, 0)  # [C, D, chunk]
    valid = (jnp.arange(num_chunks * chunk_size) < vocab).reshape(num_chunks, chunk_size)

    # Recomputed in the backward pass instead of saving every chunk's logits.
    @jax.checkpoint
    def chunk_stats(w_chunk, valid_chunk):
        logits = softcap(hidden @ w_chunk.astype(jnp.float32), cap)
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


def token_logps(
    hidden_BxLxD: Array,
    w_DxV: Array,
    tokens_BxL: Array,
    predictor_BxL: Array,
    *,
    chunk_size: int = 8192,
    cap: float | None = None,
) -> Array:
    """``log p(tokens[t] | context)`` read from the distribution at ``predictor[t]``, ``[B, L]``.

    ``cap``: the model's final-logit soft-cap (``ModelConfig.final_logit_softcap``), applied to
    every logit before the softmax. Positions whose predictor is out of range (the first token
    of a row) get an arbitrary finite value; callers mask them with ``loss_mask``.
    """
    lse_BxL = chunked_logsumexp(hidden_BxLxD, w_DxV, chunk_size=chunk_size, cap=cap)
    pred = jnp.clip(predictor_BxL, 0, tokens_BxL.shape[1] - 1)
    h_pred = jnp.take_along_axis(hidden_BxLxD, pred[..., None], axis=1).astype(jnp.float32)
    lse_pred = jnp.take_along_axis(lse_BxL, pred, axis=1)
    w_tok = jnp.take(w_DxV.T, tokens_BxL, axis=0).astype(jnp.float32)  # [B, L, D]
    target_logit = softcap(jnp.sum(h_pred * w_tok, axis=-1), cap)
    return target_logit - lse_pred


def sequence_sums(values_BxL: Array, mask_BxL: Array, slot_ids_BxL: Array, num_slots: int) -> Array:
    """Per-slot sums ``[B, K]`` of ``values * mask`` (a one-hot contraction, local to each row)."""
    onehot = jax.nn.one_hot(slot_ids_BxL, num_slots, dtype=jnp.float32)
    return jnp.einsum("bl,blk->bk", values_BxL * mask_BxL, onehot)
