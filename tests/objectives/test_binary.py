"""Tests of fbjax.objectives.binary: KTO, BCO (shift state, UDM), PMPO."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.objectives import binary


@functools.cache
def _jitted(fn, kwargs):
    return jax.jit(functools.partial(fn, **dict(kwargs)))


class _Jit:
    """``J.kto(...)`` runs the jitted loss (one compile per kwargs) instead of eager dispatch."""

    def __getattr__(self, name):
        fn = getattr(binary, name)
        return lambda *args, **kwargs: _jitted(fn, tuple(sorted(kwargs.items())))(*args)


J = _Jit()


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def a(*values):
    return jnp.asarray(values, jnp.float32)


N = 5
_rng = np.random.default_rng(1)
_pol = jnp.asarray(_rng.uniform(-30, -5, N), jnp.float32)
_ref = jnp.asarray(_rng.uniform(-30, -5, N), jnp.float32)
_labels = a(1, 0, 1, 0, 0)

CASES = {
    "kto": (binary.kto, [_pol, _ref, _labels, jnp.asarray(0.3)]),
    "bco": (binary.bco, [_pol, _ref, _labels, jnp.asarray(-0.2)]),
    "bco_udm": (binary.bco_udm, [_pol, _ref, _labels, jnp.asarray(-0.2), a(1, 2, 1, 0.5, 10)]),
    "pmpo": (binary.pmpo, [_pol, _ref, _labels]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_shapes_finite_gradients_and_stop_gradient_metrics(name):
    fn, args = CASES[name]

    @jax.jit
    def run(policy, *rest):
        total = lambda p: jnp.sum(fn(p, *rest)[0])  # noqa: E731
        metric_total = lambda p: sum(jnp.sum(v) for v in fn(p, *rest)[1].values())  # noqa: E731
        loss, metrics = fn(policy, *rest)
        return loss, metrics, jax.grad(total)(policy), jax.grad(metric_total)(policy)

    loss, metrics = fn(*args)
    jloss, jmetrics, g, _ = run(*args)
    np.testing.assert_allclose(jloss, loss, rtol=1e-6, atol=1e-6)
    assert loss.shape == (N,)
    for key, value in metrics.items():
        assert value.shape == (N,), key
        np.testing.assert_allclose(jmetrics[key], value, rtol=1e-6, atol=1e-6)
    assert np.any(np.asarray(g) != 0)
    for extreme in (-1e4, 0.0):
        value, _, g, mg = run(args[0].at[0].set(extreme).at[1].set(extreme), *args[1:])
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(g))
        np.testing.assert_array_equal(mg, 0.0)


# ----------------------------------------------------------------------------- KTO


def test_kto_reference_point_hand_value_clamp_and_mask():
    z0 = J.kto_reference_point(a(-3.0, -5.0, 7.0), a(-4.0, -5.0, 0.0), a(1, 1, 0))
    np.testing.assert_allclose(z0, 0.5, rtol=1e-6)  # mean(1, 0); the padded pair is ignored
    z0 = J.kto_reference_point(a(-6.0, -5.0), a(-4.0, -5.0), a(1, 1))
    np.testing.assert_array_equal(z0, 0.0)  # mean -1 clamps to 0


def test_kto_reference_point_no_valid_pair_and_nan_padding():
    z0 = J.kto_reference_point(a(jnp.nan, -1.0), a(0.0, jnp.inf), a(0, 0))
    np.testing.assert_array_equal(z0, 0.0)
    g = jax.jit(jax.grad(lambda p: binary.kto_reference_point(p, a(-4.0, -5.0), a(1, 1))))(
        a(-3.0, -5.0)
    )
    np.testing.assert_array_equal(g, 0.0)  # stop-gradient


def test_kto_hand_values():
    beta, z0 = 0.5, 1.0
    # desirable: rho = 3 -> 1 - sigmoid(0.5 * 2); undesirable: rho = -1 -> 1 - sigmoid(0.5 * 2)
    loss, metrics = J.kto(a(-2.0, -6.0), a(-5.0, -5.0), a(1, 0), jnp.asarray(z0), beta=beta,
                          desirable_weight=2.0, undesirable_weight=3.0)
    np.testing.assert_allclose(loss, [2 * (1 - sigmoid(1.0)), 3 * (1 - sigmoid(1.0))], rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], [1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/rejected"], [0.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], [1.0, 1.0])


def test_kto_matches_numpy_and_shift_invariance():
    z0 = 0.4
    loss, _ = J.kto(_pol, _ref, _labels, jnp.asarray(z0), beta=0.1, undesirable_weight=1.3)
    rho = np.asarray(_pol, np.float64) - np.asarray(_ref, np.float64)
    lab = np.asarray(_labels)
    expected = np.where(lab > 0, 1 - 1 / (1 + np.exp(-0.1 * (rho - z0))),
                        1.3 * (1 - 1 / (1 + np.exp(-0.1 * (z0 - rho)))))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    shifted, _ = J.kto(_pol + 2.0, _ref + 2.0, _labels, jnp.asarray(z0), beta=0.1,
                       undesirable_weight=1.3)
    np.testing.assert_allclose(shifted, loss, rtol=1e-5)


@pytest.mark.parametrize("labels", [a(1, 1, 1, 1, 1), a(0, 0, 0, 0, 0)])
def test_kto_one_class_batches_and_no_kl_pairs_are_finite(labels):
    @jax.jit
    def run(policy):
        z0 = binary.kto_reference_point(policy, _ref, jnp.zeros(N))  # no valid KL pair
        loss, metrics = binary.kto(policy, _ref, labels, z0)
        return loss, metrics, jax.grad(lambda p: jnp.sum(binary.kto(p, _ref, labels, z0)[0]))(
            policy
        )

    loss, metrics, grad = run(_pol)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    for value in metrics.values():
        assert np.all(np.isfinite(value))
    np.testing.assert_array_equal(metrics["kl"], 0.0)


def test_kto_gradient_direction():
    g = jax.jit(jax.grad(lambda p: jnp.sum(binary.kto(p, a(0.0, 0.0), a(1, 0), 0.0)[0])))(
        a(0.0, 0.0)
    )
    assert g[0] < 0 < g[1]  # raise desirable, lower undesirable


# ----------------------------------------------------------------------------- BCO


def test_bco_shift_running_mean_by_hand():
    state = binary.bco_init_shift()
    batches = [
        (a(1.0, 2.0, 3.0, 100.0), a(1, 0, 1, 0), a(1, 1, 1, 0)),  # padding ignored
        (a(-1.0, 5.0), a(0, 1), a(1, 1)),
        (a(7.0, 7.0), a(1, 1), a(0, 0)),  # empty batch: unchanged
        (a(0.5), a(0), a(1)),
    ]
    seen = []
    for rewards, labels, valid in batches:
        state = J.bco_update_shift(state, rewards, labels, valid)
        seen += [float(r) for r, v in zip(rewards, valid) if v > 0]
        np.testing.assert_allclose(state.mean, np.mean(seen), rtol=1e-6)
        np.testing.assert_allclose(state.var, np.var(seen), rtol=1e-5)
        np.testing.assert_allclose(state.count, len(seen), rtol=1e-6)
    assert state.mean.dtype == jnp.float32


def test_bco_shift_first_batch_replaces_initial_value_and_class_balanced():
    state = J.bco_update_shift(binary.bco_init_shift(), a(4.0, 0.0, 2.0), a(1, 0, 0),
                               a(1, 1, 1))
    np.testing.assert_allclose(state.mean, 2.0, rtol=1e-6)
    balanced = J.bco_update_shift(binary.bco_init_shift(), a(4.0, 0.0, 2.0), a(1, 0, 0),
                                  a(1, 1, 1), class_balanced=True)
    np.testing.assert_allclose(balanced.mean, (4.0 + 1.0) / 2, rtol=1e-6)
    one_class = J.bco_update_shift(binary.bco_init_shift(), a(4.0, 2.0), a(1, 1), a(1, 1),
                                   class_balanced=True)
    np.testing.assert_allclose(one_class.mean, 3.0, rtol=1e-6)


def test_bco_hand_values_and_class_symmetry():
    beta, delta = 0.5, 0.25
    # rewards 0.5 * (2, -2) = (1, -1)
    loss, metrics = J.bco(a(-3.0, -7.0), a(-5.0, -5.0), a(1, 0), jnp.asarray(delta), beta=beta)
    np.testing.assert_allclose(loss, [softplus(-0.75), softplus(-1.25)], rtol=1e-6)
    np.testing.assert_allclose(metrics["delta"], [delta, delta])
    # A desirable example at r - delta = x costs what an undesirable one at -x does.
    x = a(0.7, -0.7)
    loss, _ = J.bco(x, a(0.0, 0.0), a(1, 0), jnp.asarray(0.0), beta=1.0)
    np.testing.assert_allclose(loss[0], loss[1], rtol=1e-6)


def test_bco_udm_weights_only_undesirable():
    loss, _ = J.bco(_pol, _ref, _labels, jnp.asarray(0.1))
    weights = a(7.0, 2.0, 7.0, 0.5, 3.0)
    weighted, metrics = J.bco_udm(_pol, _ref, _labels, jnp.asarray(0.1), weights)
    expected = np.where(np.asarray(_labels) > 0, 1.0, np.asarray(weights)) * np.asarray(loss)
    np.testing.assert_allclose(weighted, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["udm_weight"], [1.0, 2.0, 1.0, 0.5, 3.0])


def test_udm_density_ratio_weights_clip_and_desirable():
    clf = {"w": a(1.0), "b": jnp.asarray(0.0)}
    emb = a(math.log(3.0), 10.0, -10.0, 10.0)[:, None]
    w = J.udm_density_ratio_weights(clf, emb, a(0, 0, 0, 1))
    np.testing.assert_allclose(w, [3.0, 10.0, 0.5, 1.0], rtol=1e-5)


def test_udm_fit_classifier_is_optimal_and_ignores_padding():
    rng = np.random.default_rng(3)
    m, d = 40, 3
    emb = rng.normal(size=(m, d)).astype(np.float32)
    labels = (emb @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=m) > 0.5).astype(np.float32)
    valid = np.ones(m, np.float32)
    valid[-5:] = 0
    emb_pad = emb.copy()
    emb_pad[-5:] = 1e3
    params = J.udm_fit_classifier(emb_pad, labels, valid, l2_penalty=0.5)

    def objective(theta):
        x, y, v = emb[:-5], labels[:-5], valid[:-5]
        n, npos = v.sum(), (v * y).sum()
        s = np.where(y > 0, n / (2 * npos), n / (2 * (n - npos)))
        z = x @ theta[:d] + theta[d]
        return jnp.sum(s * jax.nn.softplus(-(2 * y - 1) * z)) + 0.25 * jnp.sum(theta[:d] ** 2)

    theta = jnp.concatenate([params["w"], params["b"][None]])
    grad = jax.jit(jax.grad(objective))(theta)
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)
    assert params["w"][0] > 0 > params["w"][1]


# ----------------------------------------------------------------------------- PMPO


def test_pmpo_hand_values_and_alpha_limits():
    loss, metrics = J.pmpo(a(-2.0, -4.0), a(-3.0, -3.0), a(1, 0), alpha=0.7, beta=0.2)
    np.testing.assert_allclose(loss, [1.4 + 0.2 * -1.0, 0.3 * -4.0 + 0.2 * 1.0], rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], [-1.0, 1.0])
    # alpha = 1: rejected examples keep only the KL term.
    loss, _ = J.pmpo(a(-2.0, -4.0), a(-3.0, -3.0), a(1, 0), alpha=1.0, beta=0.2)
    np.testing.assert_allclose(loss, [2.0 - 0.2, 0.2 * 1.0], rtol=1e-6)


def test_pmpo_gradients_follow_feedback():
    def total(p, labels, alpha):
        return jnp.sum(binary.pmpo(p, a(-3.0, -3.0), labels, alpha=alpha, beta=0.1)[0])

    g = jax.jit(jax.grad(total), static_argnums=2)(a(-2.0, -4.0), a(1, 0), 0.5)
    np.testing.assert_allclose(g, [-0.5 - 0.1, 0.5 - 0.1], rtol=1e-6)
    # Negatives only: the rejected completion is pushed down, the KL term pulls all samples up.
    g = jax.jit(jax.grad(total), static_argnums=2)(a(-2.0, -4.0), a(1, 0), 0.0)
    np.testing.assert_allclose(g, [-0.1, 1.0 - 0.1], rtol=1e-6)


def test_pmpo_batch_mean_against_the_papers_objective_by_hand():
    # -J = -alpha E_a[l] + (1 - alpha) E_r[l] + beta E[ref - l], expectations per class, the KL
    # estimate over all (reference) samples.
    alpha, beta = 0.6, 0.2
    pol = a(-2.0, -4.0, -1.0, -5.0)
    ref = a(-3.0, -3.0, -2.0, -4.0)
    labels = a(1, 0, 1, 0)  # p = 1/2
    # E_a[l] = (-2 - 1) / 2 = -1.5, E_r[l] = (-4 - 5) / 2 = -4.5, kl = ref - pol =
    # [-1, 1, -1, 1], mean 0.
    minus_j = -alpha * (-1.5) + (1 - alpha) * (-4.5) + beta * 0.0  # = 0.9 - 1.8 = -0.9
    assert minus_j == pytest.approx(-0.9)
    # The plain batch mean at p = 1/2 halves the class terms but not the KL term: with beta/2
    # it is exactly -J / 2 ...
    loss, _ = J.pmpo(pol, ref, labels, alpha=alpha, beta=beta / 2)
    np.testing.assert_allclose(float(jnp.mean(loss)), minus_j / 2, rtol=1e-6)
    # ... and with beta it is not, once the KL estimate is non-zero.
    ref2 = a(-2.0, -2.0, -2.0, -2.0)  # kl = ref2 - pol = [0, 2, -1, 3], mean 1
    minus_j2 = -alpha * (-1.5) + (1 - alpha) * (-4.5) + beta * 1.0  # = -0.7
    full, _ = J.pmpo(pol, ref2, labels, alpha=alpha, beta=beta)
    half, _ = J.pmpo(pol, ref2, labels, alpha=alpha, beta=beta / 2)
    np.testing.assert_allclose(float(jnp.mean(half)), minus_j2 / 2, rtol=1e-6)
    np.testing.assert_allclose(float(jnp.mean(full)), (minus_j2 + beta * 1.0) / 2, rtol=1e-6)
    # A 3:1 mix (p = 3/4): the class-mean hyperparameters of the docstring give c * (-J).
    labels3 = a(1, 1, 1, 0)
    e_a, e_r, kl = (-2.0 - 4.0 - 1.0) / 3, -5.0, (0 + 2 - 1 + 3) / 4
    minus_j3 = -alpha * e_a + (1 - alpha) * e_r + beta * kl
    p = 0.75
    c = 1.0 / (alpha / p + (1 - alpha) / (1 - p))
    loss3, _ = J.pmpo(pol, ref2, labels3, alpha=c * alpha / p, beta=c * beta)
    np.testing.assert_allclose(float(jnp.mean(loss3)), c * minus_j3, rtol=1e-6)
