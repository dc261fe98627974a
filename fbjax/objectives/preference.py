r"""Preference objectives: paired (DPO family, reference-free variants), reward models, listwise.

Every loss is a pure function of log-prob (or reward) arrays and returns ``(loss, metrics)``:
``loss`` is unreduced (``[P]`` for pairs, ``[G]`` for lists) and ``metrics`` is a dict of
stop-gradient arrays with the same leading shape. The training step reduces both once, as
weighted (sum, count) pairs.

Notation: :math:`\ell_\theta(y)` is the *sum* of completion-token log-probs under the policy,
:math:`\ell_{\text{ref}}(y)` the same under the frozen reference, :math:`\rho(y) = \ell_\theta(y)
- \ell_{\text{ref}}(y)` and, for a pair, :math:`h = \rho(y_w) - \rho(y_l)`. ``-log sigmoid(z)`` is
computed as ``softplus(-z)``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fbjax.objectives.numerics import as_float as _float
from fbjax.objectives.numerics import log1mexp as _log1mexp

Array = jax.Array
Metrics = dict[str, Array]

_sg = jax.lax.stop_gradient

# Finite stand-in for -inf in masked log-sum-exps: exp() of it is exactly 0 and, unlike -inf,
# it never produces (-inf) - (-inf) = NaN in the backward pass of an all-masked row.
_MASKED = -1e9


def _smoothed_logistic(z: Array, label_smoothing: float) -> Array:
    """Binary cross-entropy of logit ``z`` against the soft label ``1 - label_smoothing``."""
    loss = jax.nn.softplus(-z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * jax.nn.softplus(z)
    return loss


def _pair_metrics(
    beta: float, chosen_score: Array, rejected_score: Array, chosen_logps: Array,
    rejected_logps: Array,
) -> Metrics:
    """TRL-named pair metrics; the scores are log-ratios (or log-probs for ref-free losses)."""
    chosen_rewards = beta * chosen_score
    rejected_rewards = beta * rejected_score
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards,
        # Strict >: at step 0 (policy == reference) the accuracy is 0, not 0.5.
        "rewards/accuracy": (chosen_score > rejected_score).astype(chosen_score.dtype),
        "logps/chosen": chosen_logps,
        "logps/rejected": rejected_logps,
    }
    return {k: _sg(v) for k, v in metrics.items()}


def _check_smoothing(label_smoothing: float, upper: float, name: str) -> None:
    if not 0.0 <= label_smoothing < upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got {label_smoothing}")


# ----------------------------------------------------------------------------- DPO family


def dpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Array, Metrics]:
    r"""Direct Preference Optimization (sigmoid) loss, optionally label-smoothed (cDPO).

    .. math::
        \mathcal{L} = -(1 - \varepsilon) \log \sigma(\beta h) - \varepsilon \log \sigma(-\beta h),
        \qquad h = \rho(y_w) - \rho(y_l)

    With ``label_smoothing`` :math:`\varepsilon = 0` (the default) this is DPO Eq. 7.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        beta: inverse temperature :math:`\beta` of the implicit reward.
        label_smoothing: probability :math:`\varepsilon \in [0, 0.5)` that a label is flipped.

    Returns:
        ``(loss [P], metrics)`` with ``rewards/{chosen,rejected,margin,accuracy}`` (rewards are
        :math:`\beta\rho`) and ``logps/{chosen,rejected}``.

    References:
        Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, Eq. 7.
        Mitchell 2023, "A note on DPO with noisy preferences" (cDPO), Eq. 3.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, metrics = dpo(jnp.array([-5.0]), jnp.array([-7.0]),
        ...                     jnp.array([-6.0]), jnp.array([-6.0]), beta=0.5)
        >>> print(round(float(loss[0]), 4))  # softplus(-0.5 * 2) = log(1 + e^-1)
        0.3133
        >>> print(float(metrics["rewards/margin"][0]))
        1.0
    """
    _check_smoothing(label_smoothing, 0.5, "label_smoothing")
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    rho_c = pc - _float(ref_chosen_logps)
    rho_r = pr - _float(ref_rejected_logps)
    loss = _smoothed_logistic(beta * (rho_c - rho_r), label_smoothing)
    return loss, _pair_metrics(beta, rho_c, rho_r, pc, pr)


def dpop(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    lambda_: float = 50.0,
) -> tuple[Array, Metrics]:
    r"""DPO-Positive: DPO that also penalises the chosen response's likelihood falling below the
    reference's.

    .. math::
        \mathcal{L} = -\log \sigma\big(\beta\,[\rho(y_w) - \rho(y_l)
            - \lambda \max(0, -\rho(y_w))]\big),
        \qquad -\rho(y_w) = \ell_{\text{ref}}(y_w) - \ell_\theta(y_w)

    While the policy keeps the chosen response at least as likely as the reference does the
    penalty is 0 and this is DPO; once :math:`\ell_\theta(y_w)` drops below
    :math:`\ell_{\text{ref}}(y_w)`, every nat lost counts :math:`\lambda` times against the
    margin. DPO alone can lower both likelihoods while widening their gap, which Pal et al. show
    happens when chosen and rejected responses differ in few tokens.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        beta: inverse temperature :math:`\beta` of the implicit reward.
        lambda_: weight :math:`\lambda \ge 0` of the penalty; 50 is the paper's setting for its
            Smaug models (as recalled; check before quoting).

    Returns:
        ``(loss [P], metrics)`` with DPO's ``rewards/*`` and ``logps/*`` and ``dpop/penalty``
        (:math:`\max(0, -\rho(y_w))`, in nats).

    References:
        Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
        DPO-Positive", arXiv:2402.13228, Eq. 3.

    Examples:
        >>> import jax.numpy as jnp
        >>> # The chosen response lost 1 nat against the reference: h = 0 - 2 * 1, beta h = -1.
        >>> loss, metrics = dpop(jnp.array([-5.0]), jnp.array([-7.0]),
        ...                      jnp.array([-4.0]), jnp.array([-6.0]), beta=0.5, lambda_=2.0)
        >>> print(round(float(loss[0]), 4))  # softplus(1) = log(1 + e)
        1.3133
        >>> print(float(metrics["dpop/penalty"][0]))
        1.0
        >>> # It gained 1 nat: no penalty, DPO's softplus(-0.5 * 2) = log(1 + e^-1).
        >>> loss, _ = dpop(jnp.array([-5.0]), jnp.array([-7.0]),
        ...                jnp.array([-6.0]), jnp.array([-6.0]), beta=0.5, lambda_=2.0)
        >>> print(round(float(loss[0]), 4))
        0.3133
    """
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    rho_c = pc - _float(ref_chosen_logps)
    rho_r = pr - _float(ref_rejected_logps)
    penalty = jnp.maximum(0.0, -rho_c)
    loss = jax.nn.softplus(-beta * (rho_c - rho_r - lambda_ * penalty))
    return loss, {**_pair_metrics(beta, rho_c, rho_r, pc, pr), "dpop/penalty": _sg(penalty)}


def cdpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.2,
) -> tuple[Array, Metrics]:
    r"""Conservative DPO: DPO against a soft preference label :math:`1 - \varepsilon`.

    .. math::
        \mathcal{L} = -(1 - \varepsilon) \log \sigma(\beta h) - \varepsilon \log \sigma(-\beta h)

    The loss is minimised at the finite margin :math:`\beta h = \log((1-\varepsilon)/\varepsilon)`,
    which keeps the implicit reward bounded. (Not to be confused with :func:`rdpo`, which removes
    the bias of noisy labels instead.) Same as :func:`dpo` with ``label_smoothing``; the default
    :math:`\varepsilon = 0.2` is the HALOs ``cdpo`` setting.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        beta: inverse temperature :math:`\beta`.
        label_smoothing: :math:`\varepsilon \in [0, 0.5)`.

    Returns:
        ``(loss [P], metrics)`` as :func:`dpo`.

    References:
        Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO", Eq. 3;
        Rafailov et al. 2023, arXiv:2305.18290.

    Examples:
        >>> import jax.numpy as jnp
        >>> z = jnp.zeros(1)
        >>> loss, _ = cdpo(z, z, z, z, label_smoothing=0.2)
        >>> print(round(float(loss[0]), 4))  # log 2 at zero margin, whatever the smoothing
        0.6931
    """
    return dpo(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        beta=beta, label_smoothing=label_smoothing,
    )


def rdpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Robust DPO: an unbiased estimate of the clean DPO loss under a known label-flip rate.

    .. math::
        \mathcal{L} = \frac{-(1 - \varepsilon) \log \sigma(\beta h)
                            + \varepsilon \log \sigma(-\beta h)}{1 - 2\varepsilon}

    Note the *plus* sign of the flipped term (cDPO has minus) and the division by
    :math:`1 - 2\varepsilon`. For :math:`\varepsilon > 0` the loss is unbounded below as
    :math:`\beta h \to \infty` (it can be negative).

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        beta: inverse temperature :math:`\beta`.
        label_smoothing: the assumed flip rate :math:`\varepsilon \in [0, 0.5)` (paper: 0.1).

    Returns:
        ``(loss [P], metrics)`` as :func:`dpo`.

    References:
        Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO: Aligning Language Models with
        Noisy Feedback", arXiv:2403.00409, Eq. 5.

    Examples:
        >>> import jax.numpy as jnp
        >>> z = jnp.zeros(1)
        >>> loss, _ = rdpo(z, z, z, z, label_smoothing=0.1)
        >>> print(round(float(loss[0]), 4))  # (0.9 - 0.1) log 2 / 0.8 = log 2
        0.6931
    """
    _check_smoothing(label_smoothing, 0.5, "label_smoothing")
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    rho_c = pc - _float(ref_chosen_logps)
    rho_r = pr - _float(ref_rejected_logps)
    z = beta * (rho_c - rho_r)
    eps = label_smoothing
    loss = ((1.0 - eps) * jax.nn.softplus(-z) - eps * jax.nn.softplus(z)) / (1.0 - 2.0 * eps)
    return loss, _pair_metrics(beta, rho_c, rho_r, pc, pr)


def ipo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_lengths: ArrayLike,
    rejected_lengths: ArrayLike,
    *,
    beta: float = 0.1,
    length_normalize: bool = True,
) -> tuple[Array, Metrics]:
    r"""Identity Preference Optimization: squared regression of the margin onto :math:`1/(2\tau)`.

    .. math::
        \mathcal{L} = \Big(\tilde h - \frac{1}{2\tau}\Big)^2, \qquad
        \tilde h = \frac{\rho(y_w)}{|y_w|} - \frac{\rho(y_l)}{|y_l|}
        \ \text{(default)} \quad\text{or}\quad \tilde h = h

    **Default: per-token averaged log-ratios** (``length_normalize=True``), as TRL and HALOs
    compute it and as the IPO authors confirmed to TRL was used for the paper's results.
    ``length_normalize=False`` gives the paper's derivation on summed log-probs (the original DPO
    repository). The two differ in effective :math:`\tau` by the square of the length, so tune
    :math:`\tau` per choice. Lengths are clamped to at least 1.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        chosen_lengths: ``[P]`` completion token counts of the chosen responses.
        rejected_lengths: ``[P]`` completion token counts of the rejected responses.
        beta: the regularisation :math:`\tau` (called ``beta`` in TRL).
        length_normalize: average the log-ratios over completion tokens.

    Returns:
        ``(loss [P], metrics)`` as :func:`dpo` (rewards from the un-normalised sums, as TRL).

    References:
        Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
        Preferences", arXiv:2310.12036, Eq. 17.

    Examples:
        >>> import jax.numpy as jnp
        >>> z, n = jnp.zeros(1), jnp.ones(1)
        >>> loss, _ = ipo(z, z, z, z, n, n, beta=0.5)
        >>> print(float(loss[0]))  # (0 - 1/(2 * 0.5))^2
        1.0
    """
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    rho_c = pc - _float(ref_chosen_logps)
    rho_r = pr - _float(ref_rejected_logps)
    if length_normalize:
        margin = rho_c / jnp.maximum(_float(chosen_lengths), 1.0) - rho_r / jnp.maximum(
            _float(rejected_lengths), 1.0
        )
    else:
        margin = rho_c - rho_r
    loss = (margin - 1.0 / (2.0 * beta)) ** 2
    return loss, _pair_metrics(beta, rho_c, rho_r, pc, pr)


def hinge(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Hinge loss on the DPO margin (SLiC calibration loss with the reference log-ratio, RSO).

    .. math::
        \mathcal{L} = \max(0, 1 - \beta h)

    :math:`\beta` is the reciprocal of the margin. For the reference-free SLiC-HF loss with a
    likelihood regulariser see :func:`slic`.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        ref_chosen_logps: ``[P]`` chosen log-probs under the frozen reference.
        ref_rejected_logps: ``[P]`` rejected log-probs under the frozen reference.
        beta: reciprocal margin :math:`\beta`.

    Returns:
        ``(loss [P], metrics)`` as :func:`dpo`.

    References:
        Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
        arXiv:2305.10425 (rank calibration); Liu et al. 2023, "Statistical Rejection Sampling
        Improves Preference Optimization" (RSO), arXiv:2309.06657, hinge-norm loss.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = hinge(jnp.array([-1.0]), jnp.array([-3.0]), jnp.zeros(1), jnp.zeros(1),
        ...                 beta=0.25)
        >>> print(float(loss[0]))  # max(0, 1 - 0.25 * 2)
        0.5
    """
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    rho_c = pc - _float(ref_chosen_logps)
    rho_r = pr - _float(ref_rejected_logps)
    loss = jax.nn.relu(1.0 - beta * (rho_c - rho_r))
    return loss, _pair_metrics(beta, rho_c, rho_r, pc, pr)


def slic(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    *,
    delta: float = 1.0,
    regularization: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""SLiC-HF: reference-free rank-calibration hinge plus a likelihood regulariser.

    .. math::
        \mathcal{L} = \max\big(0, \delta - \ell_\theta(y_w) + \ell_\theta(y_l)\big)
                      - \lambda\, \ell_\theta(y_w)

    The regulariser is the sequence-level NLL of the chosen response (HALOs uses :math:`y_w`;
    the paper's regularisation target is the SFT target). Defaults :math:`\delta = 1`,
    :math:`\lambda = 0.1` (HALOs ``slic``).

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        delta: calibration margin :math:`\delta`.
        regularization: weight :math:`\lambda` of the NLL regulariser.

    Returns:
        ``(loss [P], metrics)``: rewards are the policy log-probs (scale 1), plus ``logps/*``.

    References:
        Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
        arXiv:2305.10425 (rank calibration loss with regularisation); HALOs ``SLiCTrainer``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = slic(jnp.array([-2.0]), jnp.array([-2.5]))
        >>> print(round(float(loss[0]), 4))  # max(0, 1 - 0.5) + 0.1 * 2
        0.7
    """
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    loss = jax.nn.relu(delta - pc + pr) - regularization * pc
    return loss, _pair_metrics(1.0, pc, pr, pc, pr)


# ----------------------------------------------------------------------------- reference-free


def simpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    chosen_lengths: ArrayLike,
    rejected_lengths: ArrayLike,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[Array, Metrics]:
    r"""Simple Preference Optimization: length-normalised, reference-free, with a target margin.

    .. math::
        \mathcal{L} = -\log \sigma\Big(\frac{\beta}{|y_w|} \ell_\theta(y_w)
                                       - \frac{\beta}{|y_l|} \ell_\theta(y_l) - \gamma\Big)

    :math:`\gamma` is the *absolute* margin (TRL ``simpo_gamma``); the official code's
    ``gamma_beta_ratio`` is :math:`\gamma/\beta` (default 0.25 with :math:`\beta = 2`, i.e.
    :math:`\gamma = 0.5`). Optional label smoothing as in :func:`dpo`. Lengths are clamped to 1.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        chosen_lengths: ``[P]`` completion token counts of the chosen responses.
        rejected_lengths: ``[P]`` completion token counts of the rejected responses.
        beta: reward scale :math:`\beta` (paper tables: 2.0-2.5, 10 for some instruct models).
        gamma: target reward margin :math:`\gamma`.
        label_smoothing: soft-label :math:`\varepsilon \in [0, 0.5)`.

    Returns:
        ``(loss [P], metrics)``: ``rewards/*`` are :math:`\beta \bar\ell_\theta`, ``logps/*`` the
        per-token averages (as SimPO and TRL log them).

    References:
        Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
        Reward", arXiv:2405.14734, Eq. 6.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = simpo(jnp.array([-4.0]), jnp.array([-8.0]), jnp.array([4.0]),
        ...                 jnp.array([4.0]), beta=2.0, gamma=2.0)
        >>> print(round(float(loss[0]), 4))  # softplus(-(2 * (-1 + 2) - 2)) = log 2
        0.6931
    """
    _check_smoothing(label_smoothing, 0.5, "label_smoothing")
    avg_c = _float(policy_chosen_logps) / jnp.maximum(_float(chosen_lengths), 1.0)
    avg_r = _float(policy_rejected_logps) / jnp.maximum(_float(rejected_lengths), 1.0)
    loss = _smoothed_logistic(beta * (avg_c - avg_r) - gamma, label_smoothing)
    return loss, _pair_metrics(beta, avg_c, avg_r, avg_c, avg_r)


def orpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    chosen_lengths: ArrayLike,
    rejected_lengths: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Odds Ratio Preference Optimization: NLL of the chosen response plus a log-odds-ratio term.

    .. math::
        \mathcal{L} = -\bar\ell_\theta(y_w)
            - \lambda \log \sigma\big(\operatorname{odds}(y_w) - \operatorname{odds}(y_l)\big),
        \qquad \operatorname{odds}(y) = \bar\ell_\theta(y) - \log(1 - e^{\bar\ell_\theta(y)})

    with :math:`\bar\ell = \ell/|y|` the per-token average. ``beta`` is :math:`\lambda` (TRL's
    name). :math:`\log(1 - e^x)` is computed stably, with :math:`\bar\ell` clamped to
    :math:`\le -10^{-6}`. The NLL term here covers the completion tokens only; the official code
    and TRL include the prompt tokens in it (add a supervised prompt term to reproduce that).

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        chosen_lengths: ``[P]`` completion token counts of the chosen responses.
        rejected_lengths: ``[P]`` completion token counts of the rejected responses.
        beta: weight :math:`\lambda` of the odds-ratio term (Mistral-ORPO-beta: 0.1).

    Returns:
        ``(loss [P], metrics)``: ``rewards/*`` are :math:`\lambda \bar\ell_\theta`, ``logps/*``
        averages, ``nll_loss``, ``log_odds_ratio`` (:math:`\log\sigma` of the odds difference)
        and ``log_odds_chosen`` (the odds difference), named as in TRL.

    References:
        Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
        Model", arXiv:2403.07691, Eq. 6-7.

    Examples:
        >>> import jax.numpy as jnp, math
        >>> lp = jnp.array([math.log(0.5) * 2])  # average log-prob log(0.5): odds 1
        >>> loss, _ = orpo(lp, lp, jnp.array([2.0]), jnp.array([2.0]), beta=1.0)
        >>> print(round(float(loss[0]), 4))  # log 2 + 1 * log 2
        1.3863
    """
    avg_c = _float(policy_chosen_logps) / jnp.maximum(_float(chosen_lengths), 1.0)
    avg_r = _float(policy_rejected_logps) / jnp.maximum(_float(rejected_lengths), 1.0)
    log_odds = (avg_c - avg_r) - (
        _log1mexp(avg_c, max_x=-1e-6) - _log1mexp(avg_r, max_x=-1e-6)
    )
    nll = -avg_c
    loss = nll + beta * jax.nn.softplus(-log_odds)
    metrics = _pair_metrics(beta, avg_c, avg_r, avg_c, avg_r)
    metrics["nll_loss"] = _sg(nll)
    metrics["log_odds_ratio"] = _sg(-jax.nn.softplus(-log_odds))
    metrics["log_odds_chosen"] = _sg(log_odds)
    return loss, metrics


def cpo(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    chosen_lengths: ArrayLike,
    *,
    beta: float = 0.1,
    nll_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[Array, Metrics]:
    r"""Contrastive Preference Optimization: reference-free DPO on summed log-probs plus NLL.

    .. math::
        \mathcal{L} = -\log \sigma\big(\beta(\ell_\theta(y_w) - \ell_\theta(y_l))\big)
                      - \alpha\, \frac{\ell_\theta(y_w)}{|y_w|}

    The preference term uses *summed* log-probs; the NLL term is the per-token average over the
    chosen completion (TRL ``cpo_alpha``, ALMA-R's weight 1). Optional label smoothing.

    Args:
        policy_chosen_logps: ``[P]`` summed completion log-probs of the chosen responses.
        policy_rejected_logps: ``[P]`` the same for the rejected responses.
        chosen_lengths: ``[P]`` completion token counts of the chosen responses.
        beta: inverse temperature :math:`\beta`.
        nll_weight: weight :math:`\alpha` of the chosen NLL.
        label_smoothing: soft-label :math:`\varepsilon \in [0, 0.5)`.

    Returns:
        ``(loss [P], metrics)``: ``rewards/*`` are :math:`\beta\ell_\theta`, ``logps/*`` sums,
        plus ``nll_loss``.

    References:
        Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
        Performance in Machine Translation", arXiv:2401.08417, Eq. 3 (the preference term).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = cpo(jnp.array([-4.0]), jnp.array([-4.0]), jnp.array([2.0]))
        >>> print(round(float(loss[0]), 4))  # log 2 + 4 / 2
        2.6931
    """
    _check_smoothing(label_smoothing, 0.5, "label_smoothing")
    pc, pr = _float(policy_chosen_logps), _float(policy_rejected_logps)
    nll = -pc / jnp.maximum(_float(chosen_lengths), 1.0)
    loss = _smoothed_logistic(beta * (pc - pr), label_smoothing) + nll_weight * nll
    metrics = _pair_metrics(beta, pc, pr, pc, pr)
    metrics["nll_loss"] = _sg(nll)
    return loss, metrics


# ----------------------------------------------------------------------------- reward models


def _bt(chosen, rejected, margins, center_rewards_coefficient):
    rc, rr = _float(chosen), _float(rejected)
    loss = jax.nn.softplus(-(rc - rr - margins))
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (rc + rr) ** 2
    metrics = _pair_metrics(1.0, rc, rr, rc, rr)
    # A reward model has no log-probs to log.
    del metrics["logps/chosen"], metrics["logps/rejected"]
    return loss, metrics


def bradley_terry(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    *,
    margin: float = 0.0,
    center_rewards_coefficient: float = 0.0,
) -> tuple[Array, Metrics]:
    r"""Bradley-Terry reward-model loss with an optional margin and reward centring.

    .. math::
        \mathcal{L} = -\log \sigma(r_w - r_l - m) + \eta\, (r_w + r_l)^2

    The margin :math:`m` is subtracted inside the sigmoid (TRL). The centring term
    (:math:`\eta` = TRL ``center_rewards_coefficient``) pulls the rewards towards zero mean. For a
    per-pair margin taken from the data, use :func:`bradley_terry_margin`.

    Args:
        chosen_rewards: ``[P]`` scalar rewards :math:`r_\phi(x, y_w)`.
        rejected_rewards: ``[P]`` scalar rewards :math:`r_\phi(x, y_l)`.
        margin: constant margin :math:`m`.
        center_rewards_coefficient: centring weight :math:`\eta` (0 disables it).

    Returns:
        ``(loss [P], metrics)``: ``rewards/{chosen,rejected,margin,accuracy}``.

    References:
        Stiennon et al. 2020, "Learning to summarize from human feedback", arXiv:2009.01325,
        Eq. 1; Ouyang et al. 2022, arXiv:2203.02155, Eq. 1; centring: Eisenstein et al. 2023,
        "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward
        Hacking", arXiv:2312.09244.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = bradley_terry(jnp.array([1.0]), jnp.array([1.0]),
        ...                         center_rewards_coefficient=0.5)
        >>> print(round(float(loss[0]), 4))  # log 2 + 0.5 * 2^2
        2.6931
    """
    return _bt(chosen_rewards, rejected_rewards, margin, center_rewards_coefficient)


def bradley_terry_margin(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    margins: ArrayLike,
    *,
    center_rewards_coefficient: float = 0.0,
) -> tuple[Array, Metrics]:
    r"""Bradley-Terry reward-model loss with a per-pair margin from the data.

    .. math::
        \mathcal{L} = -\log \sigma(r_w - r_l - m_i) + \eta\, (r_w + r_l)^2

    Args:
        chosen_rewards: ``[P]`` scalar rewards of the chosen responses.
        rejected_rewards: ``[P]`` scalar rewards of the rejected responses.
        margins: ``[P]`` per-pair margins :math:`m_i` (e.g. from preference strength).
        center_rewards_coefficient: centring weight :math:`\eta`.

    Returns:
        ``(loss [P], metrics)`` as :func:`bradley_terry`.

    References:
        Touvron et al. 2023, "Llama 2", arXiv:2307.09288, Eq. 2 (margin); TRL ``RewardTrainer``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = bradley_terry_margin(jnp.array([3.0]), jnp.array([1.0]), jnp.array([2.0]))
        >>> print(round(float(loss[0]), 4))
        0.6931
    """
    return _bt(chosen_rewards, rejected_rewards, _float(margins), center_rewards_coefficient)


def _ordered_pair_mask(ranks: Array, valid: Array) -> Array:
    """``[G, K, K]``: entry (i, j) is 1 when both are valid and i is ranked strictly above j."""
    v = valid > 0
    above = ranks[:, :, None] < ranks[:, None, :]
    return (v[:, :, None] & v[:, None, :] & above).astype(jnp.float32)


def kwise_bradley_terry(
    rewards: ArrayLike,
    ranks: ArrayLike,
    valid: ArrayLike,
) -> tuple[Array, Metrics]:
    r"""InstructGPT K-wise reward-model loss: all :math:`\binom{K}{2}` comparisons of one prompt.

    .. math::
        \mathcal{L}_g = -\frac{1}{\binom{K}{2}} \sum_{\text{rank}(i) < \text{rank}(j)}
                        \log \sigma(r_i - r_j)

    Each prompt's comparisons form a single example, so every completion is scored once and long
    lists do not dominate the batch (normalising per prompt, not over flattened pairs). Ties
    (equal ranks) and invalid slots form no pair; the normaliser is the number of ordered pairs,
    :math:`\binom{K}{2}` without ties. A list with no pair has loss 0.

    Args:
        rewards: ``[G, K]`` scalar rewards of the K completions of each prompt.
        ranks: ``[G, K]`` labeller ranks, lower is better (0 = best).
        valid: ``[G, K]`` 1 for real completions, 0 for padding.

    Returns:
        ``(loss [G], metrics)``: ``rewards/accuracy`` (fraction of pairs the model orders
        correctly, strict), ``rewards/margin`` (mean pair margin), ``pairs`` (pair count).

    References:
        Ouyang et al. 2022, "Training language models to follow instructions with human
        feedback", arXiv:2203.02155, Eq. 1.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, m = kwise_bradley_terry(jnp.array([[2.0, 1.0, 0.0]]),
        ...                               jnp.array([[0, 1, 2]]), jnp.ones((1, 3)))
        >>> # (2 softplus(-1) + softplus(-2)) / 3 over the pairs (0,1), (1,2), (0,2)
        >>> print(round(float(loss[0]), 4), float(m["pairs"][0]))
        0.2512 3.0
    """
    v = _float(valid)
    # Padding may hold anything; zero it so neither the value nor the gradient sees it.
    r = jnp.where(v > 0, _float(rewards), 0.0)
    pairs = _ordered_pair_mask(jnp.asarray(ranks), v)
    diff = r[:, :, None] - r[:, None, :]
    count = jnp.sum(pairs, axis=(1, 2))
    denom = jnp.maximum(count, 1.0)
    loss = jnp.sum(pairs * jax.nn.softplus(-diff), axis=(1, 2)) / denom
    metrics = {
        "rewards/accuracy": jnp.sum(pairs * (diff > 0), axis=(1, 2)) / denom,
        "rewards/margin": jnp.sum(pairs * diff, axis=(1, 2)) / denom,
        "pairs": count,
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- listwise


def plackett_luce(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    valid: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Listwise DPO under the Plackett-Luce ranking model.

    .. math::
        \mathcal{L}_g = -\sum_{k=1}^{K} \Big[ s_k - \log \sum_{j \ge k} e^{s_j} \Big],
        \qquad s_k = \beta\, \rho(y_{\tau(k)})

    The completions are given in ranked order :math:`\tau` (best first along K); invalid slots
    are skipped both as terms and inside the suffix sums. The last valid term is identically 0,
    and :math:`K = 2` recovers :func:`dpo`.

    Args:
        policy_logps: ``[G, K]`` summed completion log-probs, ranked best first.
        ref_logps: ``[G, K]`` the same under the reference.
        valid: ``[G, K]`` 1 for real completions, 0 for padding.
        beta: inverse temperature :math:`\beta`.

    Returns:
        ``(loss [G], metrics)``: ``rewards/accuracy`` (fraction of ordered pairs whose implicit
        rewards follow the ranking, strict), ``rewards/top`` (:math:`s` of the best completion).

    References:
        Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, Appendix A.3
        (the Plackett-Luce objective).

    Examples:
        >>> import jax.numpy as jnp
        >>> z = jnp.zeros((1, 3))
        >>> loss, _ = plackett_luce(z, z, jnp.ones((1, 3)))
        >>> print(round(float(loss[0]), 4))  # log 3 + log 2 at equal rewards
        1.7918
    """
    v = _float(valid) > 0
    s = jnp.where(v, beta * (_float(policy_logps) - _float(ref_logps)), 0.0)
    k = s.shape[-1]
    idx = jnp.arange(k)
    # suffix[g, i, j]: j is in the suffix of position i; the diagonal keeps every row non-empty.
    suffix = (idx[None, :] >= idx[:, None])[None] & (v[:, None, :] | jnp.eye(k, dtype=bool)[None])
    lse = jax.nn.logsumexp(jnp.where(suffix, s[:, None, :], _MASKED), axis=-1)
    loss = -jnp.sum(jnp.where(v, s - lse, 0.0), axis=-1)
    ranks = jnp.broadcast_to(idx, s.shape)
    pairs = _ordered_pair_mask(ranks, v)
    correct = pairs * (s[:, :, None] > s[:, None, :])
    metrics = {
        "rewards/accuracy": jnp.sum(correct, axis=(1, 2)) / jnp.maximum(
            jnp.sum(pairs, axis=(1, 2)), 1.0
        ),
        "rewards/top": s[:, 0],
    }
    return loss, {k_: _sg(v_) for k_, v_ in metrics.items()}


def irpo(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    relevance: ArrayLike,
    valid: ArrayLike,
    *,
    beta: float = 1.0,
) -> tuple[Array, Metrics]:
    r"""In-context Ranking Preference Optimization: position-weighted listwise DPO.

    For a list of :math:`N` items generated in one response (item :math:`i` at position
    :math:`i`, 1-based, with graded relevance :math:`\psi_i`) and :math:`r_i = \rho(y_i)`:

    .. math::
        \mathcal{L}_g = -\frac{1}{N} \sum_{i=1}^{N} w_i \log \sigma\Big(
            -\Big[\log \sum_{j \ne i} e^{\beta (r_j - r_i)} - \log(N - 1)\Big]\Big),
        \qquad w_i = \frac{2^{\psi_i} - 1}{\log_2(1 + i)}

    i.e. each item is compared with the average (in log-sum-exp) of the others, weighted by its
    DCG gain and position discount; items of relevance 0 get weight 0. This is the objective of
    the official implementation (``trainers.py: rdpo_loss``), except that the diagonal
    :math:`j = i` is masked exactly rather than by subtracting 100 before :math:`\beta` (which
    leaks :math:`e^{-100\beta}`). The official code sums the per-list losses over the batch; here
    they are returned per list and the training step takes the (weighted) mean, a constant factor.
    The official code scores each item by the **per-token average** log-prob of its tokens
    (``calculate_movie_logps(average_log_prob=True)``); pass such values if reproducing it.
    Lists with fewer than two valid items have loss 0. Valid items must come first along K.

    Args:
        policy_logps: ``[G, K]`` log-probs of each item of the list (in generated order).
        ref_logps: ``[G, K]`` the same under the reference.
        relevance: ``[G, K]`` graded relevance :math:`\psi_i \ge 0` of each item.
        valid: ``[G, K]`` 1 for real items, 0 for padding.
        beta: inverse temperature :math:`\beta` (README training setting 1.0; the function
            default in the official code is 0.1).

    Returns:
        ``(loss [G], metrics)``: ``rewards/accuracy`` (fraction of item pairs with different
        relevance whose implicit rewards are ordered accordingly, strict) and ``weights/sum``.

    References:
        Wu, Surana et al. 2025, "In-context Ranking Preference Optimization", arXiv:2504.15477;
        official implementation ``trainers.py: rdpo_loss``.

    Examples:
        >>> import jax.numpy as jnp, math
        >>> z = jnp.zeros((1, 2))
        >>> loss, _ = irpo(z, z, jnp.array([[1.0, 0.0]]), jnp.ones((1, 2)))
        >>> print(round(float(loss[0]), 4))  # (1/2) * 1 * log 2
        0.3466
    """
    v = _float(valid) > 0
    vf = v.astype(jnp.float32)
    r = jnp.where(v, _float(policy_logps) - _float(ref_logps), 0.0)
    rel = jnp.where(v, _float(relevance), 0.0)
    n = jnp.sum(vf, axis=-1)
    position = jnp.cumsum(vf, axis=-1)
    weights = jnp.where(v, (2.0**rel - 1.0) / jnp.log2(1.0 + jnp.maximum(position, 1.0)), 0.0)
    k = r.shape[-1]
    others = v[:, None, :] & ~jnp.eye(k, dtype=bool)[None]  # [G, i, j]
    # An item with no valid other (N < 2, or padding) gets a dummy finite entry; masked below.
    others_safe = others | (~jnp.any(others, axis=-1, keepdims=True) & jnp.eye(k, dtype=bool)[None])
    diffs = beta * (r[:, None, :] - r[:, :, None])
    lse = jax.nn.logsumexp(jnp.where(others_safe, diffs, _MASKED), axis=-1)
    x = lse - jnp.log(jnp.maximum(n - 1.0, 1.0))[:, None]
    terms = jnp.where(v, weights * jax.nn.softplus(x), 0.0)
    loss = jnp.where(n >= 2, jnp.sum(terms, axis=-1) / jnp.maximum(n, 1.0), 0.0)
    better = v[:, :, None] & v[:, None, :] & (rel[:, :, None] > rel[:, None, :])
    correct = better & (r[:, :, None] > r[:, None, :])
    metrics = {
        "rewards/accuracy": jnp.sum(correct, axis=(1, 2))
        / jnp.maximum(jnp.sum(better, axis=(1, 2)), 1),
        "weights/sum": jnp.sum(weights, axis=-1),
    }
    return loss, {k_: _sg(v_) for k_, v_ in metrics.items()}
