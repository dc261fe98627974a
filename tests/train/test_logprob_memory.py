"""The loss's peak memory grows with the vocabulary chunk, not with the vocabulary.

``fbjax.objectives.logprobs.token_logps`` never materialises ``[B, L, V]`` logits: a scan over
vocabulary chunks keeps a running logsumexp, and each chunk's logits are recomputed in the
backward pass. We read XLA's own accounting of the compiled forward + backward
(``memory_analysis().temp_size_in_bytes``) for a 128k vocabulary with tiny hidden size, so that
the logits-shaped buffers dominate, and the shapes compile in seconds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from fbjax.objectives import logprobs

B, L, D = 2, 128, 8
VOCAB = 128 * 1024
F32 = 4


@functools.lru_cache(maxsize=None)
def temp_bytes(chunk: int, vocab: int = VOCAB) -> int:
    """Temporary bytes of the compiled value-and-grad of the summed token log-probs."""

    def loss(hidden, w, tokens, predictor):
        return jnp.sum(logprobs.token_logps(hidden, w, tokens, predictor, chunk_size=chunk))

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    compiled = fn.lower(
        jax.ShapeDtypeStruct((B, L, D), jnp.float32),
        jax.ShapeDtypeStruct((D, vocab), jnp.float32),
        jax.ShapeDtypeStruct((B, L), jnp.int32),
        jax.ShapeDtypeStruct((B, L), jnp.int32),
    ).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no compiled memory analysis")
    return analysis.temp_size_in_bytes


def test_temp_memory_scales_with_chunk():
    logits_bytes = B * L * VOCAB * F32  # one [B, L, V] float32 array: 128 MiB here
    weight_bytes = D * VOCAB * F32  # one [D, V] float32 array: 4 MiB here
    temps = {c: temp_bytes(c) for c in (1024, 4096, 16384)}
    assert temps[1024] <= temps[4096] < temps[16384]
    for chunk, temp in temps.items():
        # A few weight-shaped buffers (the padded, chunked weight and its gradient) plus a few
        # [B * L, chunk] float32 buffers (a chunk's raw and capped logits, its softmax and
        # cotangent); XLA's buffer reuse hides the chunk buffers inside the weight-shaped ones
        # at small chunks, so this is a bound, not a count.
        assert temp <= 4 * weight_bytes + 6 * B * L * chunk * F32, (chunk, temp)
    # Past that slack each extra chunk column costs at least one [B * L] float32 buffer.
    assert temps[16384] - temps[4096] >= (16384 - 4096) * B * L * F32
    # Far below the logits: a 1k chunk needs under a fifth of one [B, L, V] array, 16k under
    # half, while the unchunked computation (chunk = V) needs more than a whole one.
    assert temps[1024] < logits_bytes / 5 and temps[16384] < logits_bytes / 2
    assert temp_bytes(VOCAB) > logits_bytes


def test_temp_memory_does_not_scale_with_vocab():
    # Quadrupling V at a fixed 4k chunk adds only weight-shaped [D, V] buffers (the padded,
    # chunked weight and its gradient), nothing of size [B, L, V].
    small, large = temp_bytes(4096, 32 * 1024), temp_bytes(4096, VOCAB)
    grown = large - small
    weight_bytes = D * (VOCAB - 32 * 1024) * F32
    assert grown <= 4 * weight_bytes, (grown, weight_bytes)
    assert grown < 0.1 * B * L * (VOCAB - 32 * 1024) * F32  # one [B, L, V] buffer: 96 MiB
