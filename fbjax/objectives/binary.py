r"""Unpaired binary-feedback objectives (thumbs up / thumbs down): KTO, BCO (with UDM), PMPO.

Each example is one completion with a label, ``1.0`` desirable and ``0.0`` undesirable. Losses
are per example (``[N]``) and never reduce over the batch. The batch statistics these methods
define (KTO's reference point :math:`z_0`, BCO's reward shift :math:`\delta`, BCO's prompt
classifier) are separate pure functions whose outputs are passed to the losses explicitly.

Per-class metrics (``rewards/chosen``, ``logps/chosen``, ...) are zero outside their class: reduce
``*/chosen`` with the weight ``labels`` and ``*/rejected`` with ``1 - labels`` to get TRL's
per-class means (``Objective.metric_weights``).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fbjax.objectives.numerics import as_float as _float

Array = jax.Array
Metrics = dict[str, Array]

_sg = jax.lax.stop_gradient


def _class_metrics(labels: Array, rewards: Array, logps: Array) -> Metrics:
    desirable = labels > 0.5
    zero = jnp.zeros_like(rewards)
    return {
        "rewards/chosen": jnp.where(desirable, rewards, zero),
        "rewards/rejected": jnp.where(desirable, zero, rewards),
        "logps/chosen": jnp.where(desirable, logps, zero),
        "logps/rejected": jnp.where(desirable, zero, logps),
    }


# ----------------------------------------------------------------------------- KTO


def kto_reference_point(
    kl_policy_logps: ArrayLike, kl_ref_logps: ArrayLike, valid: ArrayLike
) -> Array:
    r"""KTO's reference point :math:`z_0`: the clamped batch KL estimate on mismatched pairs.

    .. math::
        z_0 = \operatorname{sg}\Big[\max\Big(0, \frac{1}{|V|} \sum_{i \in V}
              \ell_\theta(y'_i \mid x_i) - \ell_{\text{ref}}(y'_i \mid x_i)\Big)\Big]

    where :math:`y'_i` is the completion of another example of the same batch paired with prompt
    :math:`x_i` (a fixed offset, e.g. :math:`i+1` cyclically, so odd batch sizes work). It is not
    :math:`\beta`-scaled. With no valid pair :math:`z_0 = 0`. Under ``jit`` with globally sharded
    inputs the mean is over the global batch, i.e. across hosts, as the paper prescribes.

    Args:
        kl_policy_logps: ``[N]`` summed policy log-probs of the mismatched completions.
        kl_ref_logps: ``[N]`` the same under the reference.
        valid: ``[N]`` 1 for real mismatched pairs, 0 for padding.

    Returns:
        A scalar, stop-gradient, :math:`\ge 0`.

    References:
        Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
        arXiv:2402.01306, Eq. 8 (the KL reference point :math:`z_0`).

    Examples:
        >>> import jax.numpy as jnp
        >>> z0 = kto_reference_point(jnp.array([-3.0, -5.0]), jnp.array([-4.0, -5.0]),
        ...                          jnp.ones(2))
        >>> print(float(z0))
        0.5
    """
    v = _sg(_float(valid))
    log_ratio = _sg(_float(kl_policy_logps) - _float(kl_ref_logps))
    n = jnp.sum(v)
    mean = jnp.sum(jnp.where(v > 0, log_ratio, 0.0) * v) / jnp.maximum(n, 1.0)
    return jnp.where(n > 0, jnp.maximum(mean, 0.0), 0.0)


def kto(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    labels: ArrayLike,
    reference_point: ArrayLike,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Array, Metrics]:
    r"""Kahneman-Tversky Optimization loss for unpaired desirable / undesirable completions.

    .. math::
        \mathcal{L}(x, y) = \begin{cases}
            \lambda_D \big(1 - \sigma(\beta(\rho(y) - z_0))\big) & y \text{ desirable} \\
            \lambda_U \big(1 - \sigma(\beta(z_0 - \rho(y)))\big) & y \text{ undesirable}
        \end{cases}

    :math:`z_0` comes from :func:`kto_reference_point` and enters as a constant. The loss
    saturates (a sigmoid, not a log-sigmoid). It is defined per example, so batches with one
    class only, or with :math:`z_0 = 0` from no valid KL pair, are finite. The paper advises
    :math:`\lambda_D n_D / (\lambda_U n_U) \in [1, 4/3]`.

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the same under the reference.
        labels: ``[N]`` 1.0 desirable, 0.0 undesirable.
        reference_point: scalar (or ``[N]``) :math:`z_0`.
        beta: inverse temperature :math:`\beta`.
        desirable_weight: :math:`\lambda_D`.
        undesirable_weight: :math:`\lambda_U`.

    Returns:
        ``(loss [N], metrics)``: ``rewards/{chosen,rejected}`` (:math:`\beta\rho`, zero outside
        the class), ``logps/{chosen,rejected}``, and ``kl`` (:math:`z_0`, broadcast).

    References:
        Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
        arXiv:2402.01306, Eq. 8.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = kto(jnp.array([-4.0, -4.0]), jnp.array([-4.0, -4.0]),
        ...               jnp.array([1.0, 0.0]), jnp.array(0.0))
        >>> print([round(float(x), 4) for x in loss])  # 1 - sigmoid(0) for both classes
        [0.5, 0.5]
    """
    logps = _float(policy_logps)
    rho = logps - _float(ref_logps)
    y = _float(labels)
    z0 = _sg(_float(reference_point))
    desirable = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (rho - z0)))
    undesirable = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - rho)))
    loss = jnp.where(y > 0.5, desirable, undesirable)
    metrics = _class_metrics(y, beta * rho, logps)
    metrics["kl"] = jnp.broadcast_to(z0, rho.shape)
    return loss, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- BCO


@flax.struct.dataclass
class RewardShiftState:
    """Running moments of BCO's implicit rewards (float32 scalars); checkpoint it with the model.

    ``mean`` is the reward shift :math:`\\delta`.
    """

    mean: Array
    var: Array
    count: Array


def bco_init_shift() -> RewardShiftState:
    """The initial reward-shift state: mean 0, var 1, count 1e-24 (TRL ``RunningMoments``).

    The tiny count makes the first batch's mean replace the initial value.

    Returns:
        A :class:`RewardShiftState` of float32 scalars.

    Examples:
        >>> print(float(bco_init_shift().mean))
        0.0
    """
    return RewardShiftState(
        mean=jnp.zeros((), jnp.float32),
        var=jnp.ones((), jnp.float32),
        count=jnp.full((), 1e-24, jnp.float32),
    )


def bco_update_shift(
    state: RewardShiftState,
    rewards: ArrayLike,
    labels: ArrayLike,
    valid: ArrayLike,
    *,
    class_balanced: bool = False,
) -> RewardShiftState:
    r"""Folds one batch of implicit rewards into BCO's running reward shift :math:`\delta`.

    With batch mean :math:`\bar r`, (biased) variance :math:`s^2` and count :math:`n` of the
    valid rewards :math:`r = \beta\rho(y)` of **both** classes, and state
    :math:`(\mu, v, c)`:

    .. math::
        c' = c + n, \quad \mu' = \mu + (\bar r - \mu)\frac{n}{c'}, \quad
        v' = \frac{v c + s^2 n + (\bar r - \mu)^2 c n / c'}{c'}

    i.e. the exact pooled mean of every reward seen so far (TRL ``RunningMoments.update`` as used
    by ``BCOTrainer.bco_loss``). It is applied *before* the loss, so the current batch is
    included, and only in training. A batch with no valid reward leaves the state unchanged.
    ``class_balanced=True`` replaces :math:`\bar r` by the mean of the desirable and undesirable
    batch means (falling back to the pooled mean when a class is absent); ``labels`` is only read
    then.

    Args:
        state: the current :class:`RewardShiftState`.
        rewards: ``[N]`` implicit rewards :math:`\beta(\ell_\theta - \ell_{\text{ref}})`.
        labels: ``[N]`` 1.0 desirable, 0.0 undesirable.
        valid: ``[N]`` 1 for real examples.
        class_balanced: average the two class means instead of pooling.

    Returns:
        The new state (stop-gradient); its ``mean`` is :math:`\delta` for this step's loss.

    References:
        Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv:2404.04656 (reward shift); TRL ``experimental/bco/bco_trainer.py``
        (``RunningMoments``, ``bco_loss``).

    Examples:
        >>> import jax.numpy as jnp
        >>> s = bco_update_shift(bco_init_shift(), jnp.array([1.0, 3.0]), jnp.array([1.0, 0.0]),
        ...                      jnp.ones(2))
        >>> s = bco_update_shift(s, jnp.array([6.0]), jnp.array([1.0]), jnp.ones(1))
        >>> print(round(float(s.mean), 4))  # (1 + 3 + 6) / 3
        3.3333
    """
    v = _sg(_float(valid)) > 0
    r = _sg(_float(rewards)).astype(jnp.float32)
    vf = v.astype(jnp.float32)
    n = jnp.sum(vf)
    safe_n = jnp.maximum(n, 1.0)
    pooled = jnp.sum(jnp.where(v, r, 0.0)) / safe_n
    if class_balanced:
        y = _float(labels) > 0.5
        d, u = (v & y).astype(jnp.float32), (v & ~y).astype(jnp.float32)
        nd, nu = jnp.sum(d), jnp.sum(u)
        mean_d = jnp.sum(d * jnp.where(v, r, 0.0)) / jnp.maximum(nd, 1.0)
        mean_u = jnp.sum(u * jnp.where(v, r, 0.0)) / jnp.maximum(nu, 1.0)
        batch_mean = jnp.where((nd > 0) & (nu > 0), 0.5 * (mean_d + mean_u), pooled)
    else:
        batch_mean = pooled
    batch_var = jnp.sum(jnp.where(v, (r - pooled) ** 2, 0.0)) / safe_n
    delta = batch_mean - state.mean
    total = state.count + n
    new_mean = state.mean + delta * n / total
    new_var = (state.var * state.count + batch_var * n + delta**2 * state.count * n / total) / total
    keep = n == 0
    return RewardShiftState(
        mean=jnp.where(keep, state.mean, new_mean).astype(jnp.float32),
        var=jnp.where(keep, state.var, new_var).astype(jnp.float32),
        count=jnp.where(keep, state.count, total).astype(jnp.float32),
    )


def bco(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    labels: ArrayLike,
    reward_shift: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Binary Classifier Optimization: logistic loss of the shifted implicit reward.

    .. math::
        \mathcal{L}(x, y) = \begin{cases}
            -\log \sigma(r(y) - \delta) & y \text{ desirable} \\
            -\log \sigma(-(r(y) - \delta)) & y \text{ undesirable}
        \end{cases},
        \qquad r(y) = \beta \rho(y)

    :math:`\delta` (``reward_shift``) is the ``mean`` of the state returned by
    :func:`bco_update_shift` for this batch, a constant here. For underlying distribution
    matching use :func:`bco_udm`.

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the same under the reference.
        labels: ``[N]`` 1.0 desirable, 0.0 undesirable.
        reward_shift: scalar (or ``[N]``) :math:`\delta`, on the :math:`\beta`-scaled reward.
        beta: inverse temperature :math:`\beta`.

    Returns:
        ``(loss [N], metrics)``: ``rewards/{chosen,rejected}`` (:math:`r`, zero outside the
        class), ``logps/{chosen,rejected}``, ``delta`` (broadcast).

    References:
        Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv:2404.04656 (BCO loss with reward shift); TRL ``BCOTrainer.bco_loss``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = bco(jnp.array([-2.0, -2.0]), jnp.array([-4.0, -4.0]),
        ...               jnp.array([1.0, 0.0]), jnp.array(0.2), beta=0.1)
        >>> print([round(float(x), 4) for x in loss])  # log 2 each: r - delta = 0
        [0.6931, 0.6931]
    """
    logps = _float(policy_logps)
    reward = beta * (logps - _float(ref_logps))
    y = _float(labels)
    delta = _sg(_float(reward_shift))
    shifted = reward - delta
    loss = jnp.where(y > 0.5, jax.nn.softplus(-shifted), jax.nn.softplus(shifted))
    metrics = _class_metrics(y, reward, logps)
    metrics["delta"] = jnp.broadcast_to(delta, reward.shape)
    return loss, {k: _sg(v) for k, v in metrics.items()}


def bco_udm(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    labels: ArrayLike,
    reward_shift: ArrayLike,
    udm_weights: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""BCO with underlying distribution matching: undesirable losses weighted by a density ratio.

    .. math::
        \mathcal{L}(x, y) = \begin{cases}
            -\log \sigma(r(y) - \delta) & y \text{ desirable} \\
            -w(x) \log \sigma(-(r(y) - \delta)) & y \text{ undesirable}
        \end{cases}

    with :math:`w(x)` from :func:`udm_density_ratio_weights` (1 for desirable examples).

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the same under the reference.
        labels: ``[N]`` 1.0 desirable, 0.0 undesirable.
        reward_shift: scalar (or ``[N]``) :math:`\delta`.
        udm_weights: ``[N]`` density-ratio weights (only the undesirable entries are used).
        beta: inverse temperature :math:`\beta`.

    Returns:
        ``(loss [N], metrics)`` as :func:`bco`, plus ``udm_weight``.

    References:
        Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv:2404.04656 (underlying distribution matching); TRL
        ``BCOTrainer._get_udm_weight``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = bco_udm(jnp.zeros(2), jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array(0.0),
        ...                   jnp.array([5.0, 2.0]))
        >>> print([round(float(x), 4) for x in loss])  # log 2 and 2 log 2
        [0.6931, 1.3863]
    """
    loss, metrics = bco(policy_logps, ref_logps, labels, reward_shift, beta=beta)
    y = _float(labels)
    w = jnp.where(y > 0.5, 1.0, _sg(_float(udm_weights)))
    metrics["udm_weight"] = w
    return w * loss, metrics


def udm_fit_classifier(
    prompt_embeddings: ArrayLike,
    labels: ArrayLike,
    valid: ArrayLike,
    *,
    l2_penalty: float = 1.0,
    steps: int = 25,
) -> dict[str, Array]:
    r"""Fits BCO's prompt classifier: class-balanced, L2-regularised logistic regression.

    Minimises, over weights :math:`w` and an unpenalised intercept :math:`b`,

    .. math::
        \sum_i s_i \big[\operatorname{softplus}(-(2y_i - 1)(w^\top e_i + b))\big]
        + \frac{\lambda}{2} \lVert w \rVert^2, \qquad s_i = \frac{n}{2 n_{y_i}}

    with Newton's method (``steps`` iterations from zero; the problem is strictly convex in
    :math:`w`). This is scikit-learn's ``LogisticRegression(C=1/lambda,
    class_weight="balanced")``, which TRL fits on desirable (1) versus undesirable (0) prompt
    embeddings. Pure and jittable; :math:`D` is an embedding width (hundreds), so the
    :math:`(D+1)^2` Hessian is small.

    Args:
        prompt_embeddings: ``[M, D]`` prompt embeddings from a frozen embedder.
        labels: ``[M]`` 1.0 for prompts of desirable examples, 0.0 for undesirable.
        valid: ``[M]`` 1 for real rows.
        l2_penalty: :math:`\lambda = 1/C` (scikit-learn's default ``C = 1``).
        steps: Newton iterations.

    Returns:
        ``{"w": [D], "b": []}``.

    References:
        Jung et al. 2024, arXiv:2404.04656 (UDM); TRL ``BCOTrainer.__init__`` (classifier
        fit on ``prompt_sample_size`` prompts per class, sampled with replacement).

    Examples:
        >>> import jax.numpy as jnp
        >>> e = jnp.array([[1.0], [2.0], [-1.0], [-2.0]])
        >>> params = udm_fit_classifier(e, jnp.array([1.0, 1.0, 0.0, 0.0]), jnp.ones(4))
        >>> print(bool(params["w"][0] > 0), abs(round(float(params["b"]), 4)))  # symmetric data
        True 0.0
    """
    x = _float(prompt_embeddings).astype(jnp.float32)
    y = (_float(labels) > 0.5).astype(jnp.float32)
    v = (_float(valid) > 0).astype(jnp.float32)
    m, d = x.shape
    n = jnp.sum(v)
    n_pos = jnp.sum(v * y)
    n_neg = n - n_pos
    sample_weight = v * jnp.where(
        y > 0, n / (2.0 * jnp.maximum(n_pos, 1.0)), n / (2.0 * jnp.maximum(n_neg, 1.0))
    )
    xb = jnp.concatenate([x, jnp.ones((m, 1), x.dtype)], axis=1)
    # The intercept is unpenalised; a tiny ridge keeps the Hessian invertible when a class is empty.
    penalty = jnp.concatenate([jnp.full((d,), l2_penalty, x.dtype), jnp.array([1e-6], x.dtype)])

    def newton(_, theta):
        p = jax.nn.sigmoid(xb @ theta)
        grad = xb.T @ (sample_weight * (p - y)) + penalty * theta
        hess = (xb * (sample_weight * p * (1.0 - p))[:, None]).T @ xb + jnp.diag(penalty)
        return theta - jnp.linalg.solve(hess, grad)

    theta = jax.lax.fori_loop(0, steps, newton, jnp.zeros((d + 1,), x.dtype))
    return {"w": theta[:d], "b": theta[d]}


def udm_density_ratio_weights(
    classifier: dict[str, ArrayLike],
    prompt_embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    min_ratio: float = 0.5,
    max_ratio: float = 10.0,
) -> Array:
    r"""BCO-UDM weights: the clipped density ratio :math:`p_D(x)/p_U(x)` for undesirable examples.

    .. math::
        w(x) = \operatorname{clip}\Big(\frac{p}{1 - p + 10^{-8}}, w_{\min}, w_{\max}\Big),
        \qquad p = \sigma(w^\top e(x) + b) = P(\text{desirable} \mid x)

    for undesirable examples and 1 for desirable ones (TRL ``_get_udm_weight``; config defaults
    0.5 and 10).

    Args:
        classifier: ``{"w": [D], "b": []}`` from :func:`udm_fit_classifier`.
        prompt_embeddings: ``[N, D]`` embeddings of the batch's prompts.
        labels: ``[N]`` 1.0 desirable, 0.0 undesirable.
        min_ratio: lower clip :math:`w_{\min}`.
        max_ratio: upper clip :math:`w_{\max}`.

    Returns:
        ``[N]`` weights (stop-gradient), to pass to :func:`bco_udm` as ``udm_weights``.

    References:
        Jung et al. 2024, arXiv:2404.04656 (UDM); TRL ``BCOConfig.min_density_ratio``,
        ``max_density_ratio``.

    Examples:
        >>> import jax.numpy as jnp, math
        >>> clf = {"w": jnp.array([1.0]), "b": jnp.array(0.0)}
        >>> w = udm_density_ratio_weights(clf, jnp.array([[math.log(3.0)], [0.0]]),
        ...                               jnp.array([0.0, 1.0]))
        >>> print([round(float(x), 4) for x in w])  # p = 3/4: ratio 3; desirable: 1
        [3.0, 1.0]
    """
    e = _float(prompt_embeddings)
    logits = e @ _float(classifier["w"]) + _float(classifier["b"])
    p = jax.nn.sigmoid(logits)
    ratio = jnp.clip(p / (1.0 - p + 1e-8), min_ratio, max_ratio)
    return _sg(jnp.where(_float(labels) > 0.5, 1.0, ratio))


# ----------------------------------------------------------------------------- PMPO


def pmpo(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 0.5,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Preference-based MPO: weighted likelihood on accepted, unlikelihood on rejected, KL anchor.

    The paper maximises

    .. math::
        J(\theta) = \alpha\, \mathbb{E}_{D_a}[\ell_\theta(y)]
                    - (1 - \alpha)\, \mathbb{E}_{D_r}[\ell_\theta(y)]
                    - \beta\, \mathrm{KL}(\pi_{\text{ref}} \,\Vert\, \pi_\theta).

    Per example this is

    .. math::
        \mathcal{L}(x, y) = -\alpha\, \mathbb{1}[y \in D_a]\, \ell_\theta(y)
            + (1 - \alpha)\, \mathbb{1}[y \in D_r]\, \ell_\theta(y)
            + \beta\, \big(\ell_{\text{ref}}(y) - \ell_\theta(y)\big)

    where the KL term is the single-sample Monte Carlo estimate
    :math:`\log \pi_{\text{ref}}(y) - \log \pi_\theta(y)` for :math:`y \sim \pi_{\text{ref}}`:
    the completions (accepted and rejected alike) are samples of the reference policy, as in the
    paper's setting, so its gradient is an unbiased estimate of
    :math:`-\beta\,\mathbb{E}_{\pi_{\text{ref}}}[\nabla \ell_\theta]`. ``alpha=1`` uses positives
    only, ``alpha=0`` negatives only (the KL term then is the only thing pulling likelihood up).
    The paper's expectations are per class; the step's reduction is one batch mean, which weighs
    accepted and rejected examples by their share of the batch. With a fraction :math:`p`
    accepted, the batch mean of :math:`\mathcal{L}` is
    :math:`p\,\alpha\,(-\mathbb{E}_{D_a}\ell_\theta) + (1 - p)(1 - \alpha)\,
    \mathbb{E}_{D_r}\ell_\theta + \beta\,\widehat{\mathrm{KL}}`, so even at :math:`p = 1/2`
    it is *not* :math:`-J`: it is :math:`-\tfrac12 J` with :math:`\beta` doubled (the class
    terms are halved, the KL term is not). To get :math:`-c\,J` for any :math:`p`, pass
    :math:`\alpha' = c\,\alpha / p` and :math:`\beta' = c\,\beta` with
    :math:`c = 1 / (\alpha/p + (1 - \alpha)/(1 - p))` (then
    :math:`1 - \alpha' = c\,(1 - \alpha)/(1 - p)`; at :math:`p = 1/2`: :math:`\alpha' = \alpha`,
    :math:`\beta' = \beta / 2`, :math:`c = 1/2`); ``experiments.common.pmpo_class_means`` does
    this, and :math:`c` only rescales the learning rate. With this sample estimate a rejected example's
    loss is :math:`(1 - \alpha - \beta)\,\ell_\theta(y)` plus a constant, which is bounded
    below only when :math:`\beta \ge 1 - \alpha`; keep accepted or unlabelled reference samples in the batch
    (their KL terms carry the anchor) when learning from negatives only.

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the same under the reference (the sampling policy).
        labels: ``[N]`` 1.0 accepted, 0.0 rejected.
        alpha: weight :math:`\alpha \in [0, 1]` of accepted versus rejected feedback.
        beta: KL weight :math:`\beta`.

    Returns:
        ``(loss [N], metrics)``: ``logps/{chosen,rejected}`` (zero outside the class) and ``kl``
        (the per-sample estimate).

    References:
        Abdolmaleki et al. 2024, "Learning from negative feedback, or positive feedback or both"
        (v1: "Preference Optimization as Probabilistic Inference"), arXiv:2410.04166, the
        final combined objective. The KL estimator is this implementation's reading (no code was
        released).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = pmpo(jnp.array([-2.0, -2.0]), jnp.array([-3.0, -3.0]),
        ...                jnp.array([1.0, 0.0]), alpha=0.5, beta=0.1)
        >>> print([round(float(x), 4) for x in loss])  # [1 - 0.1, -1 - 0.1]
        [0.9, -1.1]
    """
    logps = _float(policy_logps)
    ref = _float(ref_logps)
    y = _float(labels) > 0.5
    kl = ref - logps
    class_term = jnp.where(y, -alpha * logps, (1.0 - alpha) * logps)
    loss = class_term + beta * kl
    zero = jnp.zeros_like(logps)
    metrics = {
        "logps/chosen": jnp.where(y, logps, zero),
        "logps/rejected": jnp.where(y, zero, logps),
        "kl": kl,
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}
