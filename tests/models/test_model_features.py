"""Model features checked against hand-derived numbers (parity with transformers is in
test_hf_parity.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.models import config as mc
from fbjax.models.config import RopeScaling, RopeType
from fbjax.models.rope import dynamic_inv_freq, static_frequencies
from fbjax.objectives import logprobs


def test_llama3_frequencies_by_hand():
    # theta 1e4, dim 8: inv_freq 1, .1, .01, .001 (wavelengths 6.28, 62.8, 628, 6283). With
    # original context 64 and factors 1 / 4 the band edges are wavelengths 64 and 16: the first
    # is kept, the second blended with s = (64 / 62.83 - 1) / 3, the last two divided by 8.
    s = RopeScaling(kind=RopeType.LLAMA3, factor=8.0, original_max_len=64, low_freq_factor=1.0,
                    high_freq_factor=4.0)
    inv_freq, attention = static_frequencies(1e4, 8, s)
    smooth = (64 / (2 * math.pi / 0.1) - 1) / 3
    np.testing.assert_allclose(
        inv_freq, [1.0, (1 - smooth) * 0.1 / 8 + smooth * 0.1, 0.01 / 8, 0.001 / 8], rtol=1e-5)
    assert attention == 1.0


def test_linear_yarn_dynamic_by_hand():
    inv, _ = static_frequencies(1e4, 8, RopeScaling(kind=RopeType.LINEAR, factor=2.0))
    np.testing.assert_allclose(inv, [0.5, 0.05, 0.005, 0.0005], rtol=1e-5)
    # YaRN with original context 64, dim 8, theta 1e4: correction dims
    # 8 ln(64 / (2 pi b)) / (2 ln 1e4) are 0.04 (b = 32, floored to 0) and 1.01 (b = 1, ceiled
    # to 2): frequency 0 extrapolates, 1 is half-way, 2 and 3 interpolate (divided by 4); the
    # cos/sin factor is 0.1 ln 4 + 1.
    inv, attention = static_frequencies(
        1e4, 8, RopeScaling(kind=RopeType.YARN, factor=4.0, original_max_len=64))
    np.testing.assert_allclose(inv, [1.0, 0.5 * 0.1 + 0.5 * 0.1 / 4, 0.01 / 4, 0.001 / 4],
                               rtol=1e-5)
    assert attention == pytest.approx(0.1 * math.log(4) + 1)
    # Dynamic NTK at twice the context with factor 2: base 1e4 * (2 * 2 - 1) ** (8 / 6).
    inv = dynamic_inv_freq(1e4, 8, 2.0, 8, jnp.asarray([16, 5]))
    base = 1e4 * 3 ** (8 / 6)
    np.testing.assert_allclose(inv[0], base ** -(np.arange(0, 8, 2) / 8), rtol=1e-5)
    np.testing.assert_allclose(inv[1], [1.0, 0.1, 0.01, 0.001], rtol=1e-5)  # within context


def test_softcapped_log_probs_match_full_softmax():
    """Training's vocab-chunked log-probs apply the final-logit soft-cap exactly as the
    full softmax of capped logits does (Gemma 2)."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    w = jnp.asarray(3 * rng.standard_normal((8, 37)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 37, (2, 5)))
    predictor = jnp.broadcast_to(jnp.arange(5) - 1, (2, 5))
    got = logprobs.token_logps(hidden, w, tokens, predictor, chunk_size=16, cap=5.0)
    full = jax.nn.log_softmax(5.0 * jnp.tanh((hidden @ w) / 5.0), axis=-1)
    want = jnp.take_along_axis(full[:, jnp.clip(predictor[0], 0)], tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(got)[:, 1:], np.asarray(want)[:, 1:], atol=1e-5)
    uncapped = logprobs.token_logps(hidden, w, tokens, predictor, chunk_size=16)
    assert np.abs(np.asarray(uncapped - got)[:, 1:]).max() > 0.1


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="model.sliding_layers has 3 entries for model.num_layers=2"):
        mc.llama(sliding_window=4, sliding_layers=(True, False, True))
    with pytest.raises(ValueError, match="model.rope_scaling.kind='mrope' is not implemented"):
        RopeScaling(kind="mrope")
    with pytest.raises(ValueError, match="longrope needs short_factor and long_factor"):
        RopeScaling(kind="longrope", short_factor=(1.0,))
    with pytest.raises(ValueError, match="short_factor has 2 entries; longrope needs one per "
                                         "rotary pair, 4"):
        mc.llama(hidden_size=32, num_heads=4, num_kv_heads=2, rope_scaling=RopeScaling(
            kind="longrope", short_factor=(1.0, 2.0), long_factor=(1.0, 2.0)))
    # original_max_len defaults to the model's context, as in transformers.
    no_original = RopeScaling(kind="yarn", factor=4.0)
    np.testing.assert_array_equal(
        static_frequencies(1e4, 8, no_original, 64)[0],
        static_frequencies(1e4, 8, RopeScaling(kind="yarn", factor=4.0, original_max_len=64))[0])
    with pytest.raises(ValueError, match="model.rope_fraction=0"):
        mc.gpt_neox(rope_fraction=0.0)


def test_presets_layer_patterns():
    assert mc.gemma2(num_layers=4).sliding_layers == (True, False, True, False)
    g3 = mc.gemma3(num_layers=12)
    assert [g3.is_sliding(i) for i in range(12)] == ([True] * 5 + [False]) * 2
    assert g3.window(5) is None and g3.window(0) == 4096


def test_longrope_frequencies_by_hand():
    """Ding et al. 2024 as transformers computes it: default frequencies divided by the short or
    long factor, cos/sin scaled by sqrt(1 + ln s / ln L) with s = 64 / 8 = 8 and L = 8."""
    from fbjax.models.rope import default_inv_freq, longrope_frequencies

    scaling = RopeScaling(kind="longrope", factor=8.0, original_max_len=8,
                          short_factor=(1.0, 2.0, 4.0, 8.0), long_factor=(2.0, 4.0, 8.0, 16.0))
    short, long, attention, original = longrope_frequencies(1e4, 8, scaling, 64)
    base = default_inv_freq(1e4, 8)
    np.testing.assert_allclose(short, base / np.array([1, 2, 4, 8]), rtol=1e-7)
    np.testing.assert_allclose(long, base / np.array([2, 4, 8, 16]), rtol=1e-7)
    assert original == 8 and abs(attention - 2 ** 0.5) < 1e-12


@pytest.mark.parametrize("in_features,features", [((8,), (2, 4)), ((2, 4), (8,))],
                         ids=["q_like", "o_like"])
def test_dense_with_multi_dim_kernel_equals_the_einsum(in_features, features):
    """Dense multiplies by a [embed, heads, head_dim] (or [heads, head_dim, embed]) kernel as one
    flat matrix; values and gradients equal the plain einsum over the named dims."""
    from fbjax.models.decoder import Dense

    cfg = mc.ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8)
    layer = Dense(cfg, in_features, features, ("a",) * (len(in_features) + len(features)), False)
    x = jax.random.normal(jax.random.key(0), (3, 5, *in_features))
    params = layer.init(jax.random.key(1), x)
    kernel = params["params"]["kernel"].unbox()
    n = len(in_features)
    spec = "abcd"[:n]
    out_spec = "wxyz"[:len(features)]
    ref = f"...{spec},{spec}{out_spec}->...{out_spec}"
    cot = jax.random.normal(jax.random.key(2), (3, 5, *features))

    def loss(kernel, x, fn):
        return jnp.sum(fn(kernel, x) * cot)

    got = jax.grad(loss, argnums=(0, 1))(
        kernel, x, lambda k, x: layer.apply({"params": {"kernel": k}}, x))
    want = jax.grad(loss, argnums=(0, 1))(kernel, x, lambda k, x: jnp.einsum(ref, x, k))
    np.testing.assert_allclose(layer.apply({"params": {"kernel": kernel}}, x), jnp.einsum(ref, x, kernel), rtol=1e-5,
                               atol=1e-6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
