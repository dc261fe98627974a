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


def token_kl_and_entropy(
    hidden_BxLxD: Array,
    w_DxV: Array,
    ref_hidden_BxLxD: Array,
    ref_w_DxV: Array,
    predictor_BxL: Array,
    *,
    chunk_size: int = 8192,
) -> tuple[Array, Array]:
    """Full-vocabulary ``KL(ref || policy)`` and policy entropy of the distribution that predicts
    each token (read at ``predictor[t]``, as :func:`token_logps`), ``[B, L]`` each, float32.

    With logits ``z`` (policy) and ``r`` (reference) and their log-normalisers ``A``, ``A_r``:
    ``KL = sum_v p_r(v) (r_v - z_v) - A_r + A`` and ``H = A - sum_v p(v) z_v``; the two sums run
    over vocabulary chunks, so memory stays ``[B, L, chunk]``. Gradients flow through the policy
    terms; pass a stop-gradient reference.
    """
    hidden = hidden_BxLxD.astype(jnp.float32)
    ref_hidden = ref_hidden_BxLxD.astype(jnp.float32)
    lse = chunked_logsumexp(hidden, w_DxV, chunk_size=chunk_size)
    ref_lse = chunked_logsumexp(ref_hidden, ref_w_DxV, chunk_size=chunk_size)
    d, vocab = w_DxV.shape
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
    kl = cross - ref_lse + lse
    entropy = lse - expected_z
    pred = jnp.clip(predictor_BxL, 0, predictor_BxL.shape[1] - 1)
    return jnp.take_along_axis(kl, pred, axis=1), jnp.take_along_axis(entropy, pred, axis=1)
