"""Tests of fbjax.objectives.negative: unlikelihood (alone and with likelihood), NPO (alone and
with a retain term), D2O, NFT."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.objectives import negative, preference


@functools.cache
def _jitted(fn, kwargs):
    return jax.jit(functools.partial(fn, **dict(kwargs)))


class _Jit:
    """``J.npo(...)`` runs the jitted loss (one compile per kwargs) instead of eager dispatch."""

    def __getattr__(self, name):
        fn = getattr(negative, name)
        return lambda *args, **kwargs: _jitted(fn, tuple(sorted(kwargs.items())))(*args)


J = _Jit()
LOG2 = math.log(2.0)


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def a(*values):
    return jnp.asarray(values, jnp.float32)


_rng = np.random.default_rng(2)
B, L = 3, 4
_tok = jnp.asarray(_rng.uniform(-5, -0.05, (B, L)), jnp.float32)
_old = jnp.asarray(_rng.uniform(-5, -0.05, (B, L)), jnp.float32)
_mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]], jnp.float32)
_seq = [jnp.asarray(_rng.uniform(-30, -5, B), jnp.float32) for _ in range(2)]
_samples = [jnp.asarray(_rng.uniform(-30, -5, (B, L)), jnp.float32) for _ in range(2)]

# (loss, positional args, index of the argument that carries the gradient)
CASES = {
    "unlikelihood": (negative.unlikelihood, [_tok, _mask], 0),
    "npo": (negative.npo, _seq, 0),
    "npo_retain": (negative.npo_retain, [*_seq, a(3, 4, 5), a(0, 1, 0)], 0),
    "unlikelihood_mle": (negative.unlikelihood_mle, [_tok, _mask, a(0, 1, 1)], 0),
    "d2o": (negative.d2o, [*_samples, _mask, *_seq], 0),
    "d2o_negative": (negative.d2o, [*_samples, _mask, *_seq], 3),
    "nft": (negative.nft, [_tok, _old, _mask, a(1, 0, 0), a(0.5, 0.5, 0.3)], 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_shapes_finite_gradients_and_stop_gradient_metrics(name):
    fn, args, i = CASES[name]

    @jax.jit
    def run(*all_args):
        def call(x):
            return fn(*all_args[:i], x, *all_args[i + 1:])

        total = lambda x: jnp.sum(call(x)[0])  # noqa: E731
        metric_total = lambda x: sum(jnp.sum(v) for v in call(x)[1].values())  # noqa: E731
        x = all_args[i]
        loss, metrics = call(x)
        return loss, metrics, jax.grad(total)(x), jax.grad(metric_total)(x)

    loss, metrics = fn(*args)
    jloss, jmetrics, g, _ = run(*args)
    np.testing.assert_allclose(jloss, loss, rtol=1e-6, atol=1e-6)
    assert loss.shape == (B,)
    for key, value in metrics.items():
        assert value.shape == (B,), key
        np.testing.assert_allclose(jmetrics[key], value, rtol=1e-6, atol=1e-6)
    assert np.any(np.asarray(g) != 0)
    for extreme in (-1e4, 0.0, -1e-12):
        extreme_args = list(args)
        extreme_args[i] = extreme_args[i].at[0].set(extreme)
        value, _, g, mg = run(*extreme_args)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(g)), extreme
        np.testing.assert_array_equal(mg, 0.0)


# ----------------------------------------------------------------------------- unlikelihood


def test_unlikelihood_hand_value_and_numpy():
    lp = jnp.log(a(0.5, 0.75, 0.9))[None]
    loss, metrics = J.unlikelihood(lp, a(1, 1, 0)[None])
    np.testing.assert_allclose(loss, [LOG2 + math.log(4.0)], rtol=1e-6)
    np.testing.assert_allclose(metrics["tokens"], [2.0])
    loss, _ = J.unlikelihood(_tok, _mask)
    p = np.exp(np.asarray(_tok, np.float64))
    expected = -(np.log(np.maximum(1 - p, 1e-5)) * np.asarray(_mask)).sum(-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_unlikelihood_masking_invariance():
    loss, _ = J.unlikelihood(_tok, _mask)
    garbage = jnp.where(_mask > 0, _tok, jnp.asarray([0.0, -jnp.inf, jnp.nan, 5.0])[None, :])
    loss_g, metrics = J.unlikelihood(garbage, _mask)
    np.testing.assert_allclose(loss_g, loss, rtol=1e-6)
    assert np.all(np.isfinite(metrics["logps/rejected"]))
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.unlikelihood(x, _mask)[0])))(garbage)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[np.asarray(_mask) == 0], 0.0)


def test_unlikelihood_clamp_near_certain_token():
    lp = a(-1e-8, math.log(0.5))[None]
    loss, _ = J.unlikelihood(lp, jnp.ones((1, 2)))
    np.testing.assert_allclose(loss, [-math.log(1e-5) + LOG2], rtol=1e-4)
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.unlikelihood(x, jnp.ones((1, 2)))[0])))(lp)
    np.testing.assert_array_equal(g[0, 0], 0.0)  # clamp active: no gradient, as the reference
    np.testing.assert_allclose(g[0, 1], 1.0, rtol=1e-5)  # d/dlogp -log(1 - p) = p / (1 - p)


# ----------------------------------------------------------------------------- NPO


def test_npo_hand_values():
    loss, metrics = J.npo(a(-7.0, -5.0), a(-7.0, -7.0), beta=0.5)
    np.testing.assert_allclose(loss, [4 * LOG2, 4 * softplus(1.0)], rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/rejected"], [0.0, 1.0])


def test_npo_beta_to_zero_is_gradient_ascent_and_shift_invariance():
    pol, ref = _seq
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.npo(x, ref, beta=1e-6)[0])))(pol)
    np.testing.assert_allclose(g, 1.0, rtol=1e-4)  # d/dlogp of +logp: push likelihood down
    np.testing.assert_allclose(J.npo(pol + 3.0, ref + 3.0)[0], J.npo(pol, ref)[0], rtol=1e-5)


def test_npo_retain_is_npo_on_forget_and_token_nll_on_retain():
    pol, ref = _seq
    lengths, retain = a(3, 4, 5), a(0, 1, 0)
    loss, metrics = J.npo_retain(pol, ref, lengths, retain, beta=0.5, retain_weight=2.0)
    npo_loss, _ = J.npo(pol, ref, beta=0.5)
    np.testing.assert_allclose(loss[jnp.array([0, 2])], npo_loss[jnp.array([0, 2])], rtol=1e-6)
    np.testing.assert_allclose(loss[1], -2.0 * pol[1] / 4.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/retain"][1], pol[1] / 4.0, rtol=1e-6)
    # d/dlogp: 2 sigma(beta rho) on the forget examples, -lambda / |y| on the retain one.
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.npo_retain(
        x, ref, lengths, retain, beta=0.5, retain_weight=2.0)[0])))(pol)
    rho = np.asarray(pol - ref, np.float64)
    np.testing.assert_allclose(g, [2 / (1 + math.exp(-0.5 * rho[0])), -0.5,
                                   2 / (1 + math.exp(-0.5 * rho[2]))], rtol=1e-5)


def test_npo_retain_batch_mean_is_half_the_released_loss():
    # The released npo_grad_diff: mean NPO of the forget batch + mean token NLL of the retain
    # batch. As examples of one batch, 1:1, equal retain lengths: half of it.
    forget_pol, forget_ref = a(-9.0, -6.0), a(-8.0, -8.0)
    retain_pol, retain_len = a(-12.0, -4.0), a(4.0, 4.0)
    loss, _ = J.npo_retain(jnp.concatenate([forget_pol, retain_pol]),
                           jnp.concatenate([forget_ref, a(0.0, 0.0)]),
                           jnp.concatenate([a(3.0, 3.0), retain_len]), a(0, 0, 1, 1), beta=0.1)
    released = (np.mean([20 * softplus(0.1 * -1.0), 20 * softplus(0.1 * 2.0)])
                + (12.0 + 4.0) / 8.0)
    np.testing.assert_allclose(float(jnp.mean(loss)), released / 2, rtol=1e-6)


def test_unlikelihood_mle_rows_are_unlikelihood_and_nll_token_means():
    loss, metrics = J.unlikelihood_mle(_tok, _mask, a(0, 1, 0), alpha=0.5)
    ul, _ = J.unlikelihood(_tok, _mask)
    counts = np.asarray(_mask).sum(-1)
    np.testing.assert_allclose(loss[0], 0.5 * ul[0] / counts[0], rtol=1e-6)
    np.testing.assert_allclose(loss[2], 0.5 * ul[2] / counts[2], rtol=1e-6)
    nll = -(np.asarray(_tok, np.float64) * np.asarray(_mask))[1].sum() / counts[1]
    np.testing.assert_allclose(loss[1], nll, rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen"][1], -nll, rtol=1e-6)
    # Masked slots hold anything without changing a value or a gradient.
    garbage = jnp.where(_mask > 0, _tok, jnp.asarray([0.0, -jnp.inf, jnp.nan, 5.0])[None, :])
    np.testing.assert_allclose(J.unlikelihood_mle(garbage, _mask, a(0, 1, 0), alpha=0.5)[0],
                               loss, rtol=1e-6)
    g = jax.jit(jax.grad(lambda x: jnp.sum(
        negative.unlikelihood_mle(x, _mask, a(0, 1, 0))[0])))(garbage)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[np.asarray(_mask) == 0], 0.0)
    # A likelihood row's gradient is -1 / count per scored token: raise every one.
    np.testing.assert_allclose(np.asarray(g)[1][np.asarray(_mask)[1] > 0], -1.0 / counts[1],
                               rtol=1e-6)


# ----------------------------------------------------------------------------- D2O


def test_d2o_hand_value_single_sample_is_dpo_and_padding():
    loss, _ = J.d2o(a(-3.0, -5.0)[None], a(-4.0, -6.0)[None], jnp.ones((1, 2)), a(-9.0),
                    a(-10.0), beta=1.0, alpha=0.5)
    np.testing.assert_allclose(loss, [softplus(-(1.0 - 0.5))], rtol=1e-6)
    ps, rs = _samples
    pn, rn = _seq
    one = jnp.zeros((B, L)).at[:, 0].set(1.0)
    loss, _ = J.d2o(ps, rs, one, pn, rn, beta=0.3, alpha=0.3)
    expected, _ = preference.dpo(ps[:, 0], pn, rs[:, 0], rn, beta=0.3)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    garbage = jnp.where(one > 0, ps, 1e30)
    np.testing.assert_allclose(J.d2o(garbage, rs, one, pn, rn, beta=0.3, alpha=0.3)[0], loss,
                               rtol=1e-6)


def test_d2o_duplicate_samples_do_not_change_loss():
    ps, rs = _samples
    pn, rn = _seq
    half = jnp.asarray([[1, 1, 0, 0]] * B, jnp.float32)
    dup_ps = ps.at[:, 2:].set(ps[:, :2])
    dup_rs = rs.at[:, 2:].set(rs[:, :2])
    np.testing.assert_allclose(
        J.d2o(dup_ps, dup_rs, jnp.ones((B, L)), pn, rn)[0], J.d2o(ps, rs, half, pn, rn)[0],
        rtol=1e-5,
    )


# ----------------------------------------------------------------------------- NFT


def test_nft_group_accuracy():
    acc = J.nft_group_accuracy(a(1, 0, 1, 1)[None].repeat(2, 0), a(1, 1, 1, 0)[None].repeat(2, 0)
                               * a(1, 0)[:, None])
    np.testing.assert_allclose(acc, [[2 / 3] * 4, [0.0] * 4], rtol=1e-6)


def test_nft_on_policy_gradients_are_dr_grpo_advantages():
    # R = 1: correct tokens get -(1 - r) d log pi, wrong tokens +r d log pi (then / 1000).
    lp = jnp.full((2, 3), -1.0)
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.float32)
    r = 0.25

    def total(x):
        return jnp.sum(negative.nft(x, lp, mask, a(1, 0), a(r, r))[0])

    g = jax.jit(jax.grad(total))(lp)
    expected = np.array([[-(1 - r)] * 3, [r] * 3]) * np.asarray(mask) / 1000.0
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    loss, metrics = J.nft(lp, lp, mask, a(1, 0), a(r, r))
    np.testing.assert_allclose(loss, [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(metrics["ratio"], [1.0, 1.0], rtol=1e-6)


def test_nft_hand_value_and_normalizations():
    # One token, log-ratio log 2 (R = 2), r = 0.25, correct: -log 2 * (1 - r) / 1000.
    pol, old = a(math.log(2.0))[None], a(0.0)[None]
    loss, _ = J.nft(pol, old, jnp.ones((1, 1)), a(1), a(0.25))
    np.testing.assert_allclose(loss, [-LOG2 * 0.75 / 1000], rtol=1e-5)
    # Wrong, R = 2: proxy (1 - 0.5) / 0.75 = 2/3 < 1 clamps to 1: value 0, gradient alive.
    loss, _ = J.nft(pol, old, jnp.ones((1, 1)), a(0), a(0.25))
    np.testing.assert_allclose(loss, [0.0], atol=1e-9)
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.nft(x, old, jnp.ones((1, 1)), a(0),
                                                        a(0.25))[0])))(pol)
    # -d/dx proxy / clip(proxy) = r R / (1 - r) / 1, times (1 - r), / 1000
    np.testing.assert_allclose(g, [[0.25 * 2.0 / 1000]], rtol=1e-5)
    # Wrong, R = 1/2: proxy (1 - 0.125) / 0.75 = 7/6 > 1, unclamped.
    loss, _ = J.nft(-pol, old, jnp.ones((1, 1)), a(0), a(0.25), normalize=0)
    np.testing.assert_allclose(loss, [-math.log(7 / 6) / 1000], rtol=1e-5)
    loss2, _ = J.nft(-pol, old, jnp.ones((1, 1)), a(0), a(0.25), normalize=2)
    np.testing.assert_allclose(loss2, loss * math.sqrt(0.75 / 0.25), rtol=1e-5)


def test_nft_accuracy_is_clamped_and_log_ratio_capped():
    pol = a(15.0, -1.0)[None]
    old = a(0.0, -1.0)[None]
    loss, _ = J.nft(pol, old, jnp.ones((1, 2)), a(1), a(1.0))
    np.testing.assert_allclose(loss, [-10.0 * 0.02 / 1000], rtol=1e-5)  # cap 10, r -> 0.98
    g = jax.jit(jax.grad(lambda x: jnp.sum(negative.nft(x, old, jnp.ones((1, 2)), a(1),
                                                        a(1.0))[0])))(pol)
    np.testing.assert_allclose(g, [[0.0, -0.02 / 1000]], rtol=1e-5)


def test_nft_masking_invariance_and_checks():
    args = [_tok, _old, _mask, a(1, 0, 0), a(0.5, 0.5, 0.3)]
    loss, _ = J.nft(*args)
    garbage = jnp.where(_mask > 0, _tok, jnp.nan)
    np.testing.assert_allclose(J.nft(garbage, *args[1:])[0], loss, rtol=1e-6)
    with pytest.raises(ValueError):
        negative.nft(*args, negative_clip=0.0)
    with pytest.raises(ValueError):
        negative.nft(*args, normalize=3)


def test_nft_negative_clamp_is_exact_for_large_negative_proxy():
    # r = 0.98 (cap) and log-ratio 10 (cap): proxy = (1 - 0.98 e^10) / 0.02 ~ -1.08e6, where the
    # float32 grid step is 0.125. The clamp at eps = 0.1 must give -log 0.1 = 2.302585 exactly;
    # the reference's x + sg(max(x, eps) - x) rounds to 0.125 (-log = 2.079).
    pol, old = a(10.0)[None], a(0.0)[None]
    loss, _ = J.nft(pol, old, jnp.ones((1, 1)), a(0), a(0.98), negative_clip=0.1, normalize=0,
                    token_normalizer=1.0)
    np.testing.assert_allclose(loss, [-math.log(0.1)], rtol=1e-6)
    np.testing.assert_allclose(loss, [2.302585], rtol=1e-6)
    # The gradient still passes straight through: -d/dx log(x) at the clamp = -(dx/dpol) / 0.1,
    # with dx/dpol = -r R / (1 - r) (log-ratio 9, below the cap).
    g = jax.grad(lambda x: jnp.sum(negative.nft(x, old, jnp.ones((1, 1)), a(0), a(0.98),
                                                negative_clip=0.1, normalize=0,
                                                token_normalizer=1.0)[0]))(pol - 1.0)
    np.testing.assert_allclose(g, [[0.98 * math.exp(9.0) / 0.02 / 0.1]], rtol=1e-5)
