r"""Negative-feedback objectives: unlikelihood (alone and with likelihood), NPO (alone and with a
retain term), D2O and NFT.

These learn from responses marked bad (optionally alongside good ones or self-generated
samples). Sequence-level losses return ``[N]`` (or ``[P]``) per-example losses; token-level
losses take ``[B, L]`` per-token log-probs with a mask and return one loss per row ``[B]``.
Masked tokens never influence a value or a gradient, whatever they hold.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fbjax.objectives.numerics import as_float as _float
from fbjax.objectives.numerics import log1mexp as _log1mexp


Array = jax.Array
Metrics = dict[str, Array]

_sg = jax.lax.stop_gradient


def unlikelihood(
    policy_token_logps: ArrayLike,
    token_mask: ArrayLike,
    *,
    min_complement: float = 1e-5,
) -> tuple[Array, Metrics]:
    r"""Token-level unlikelihood on a negative response: push every token's probability down.

    .. math::
        \mathcal{L}(y^-) = -\sum_t m_t \log\big(\max(1 - p_\theta(y^-_t \mid x, y^-_{<t}),
                                                     \epsilon)\big)

    :math:`\log(1 - p)` is computed from :math:`\log p` as ``log1mexp`` (stable near
    :math:`p = 1`), with :math:`1 - p` clamped at :math:`\epsilon = 10^{-5}` as in the reference
    code (zero gradient where the clamp is active). The loss is a sum over tokens, as fairseq
    sums it; it normalises the batch sum by the token count, which the training step reproduces
    with token-count example weights. Usually combined with likelihood on positive tokens.

    Args:
        policy_token_logps: ``[B, L]`` per-token log-probs of the negative completion.
        token_mask: ``[B, L]`` 1 on the completion tokens to penalise, 0 elsewhere.
        min_complement: clamp :math:`\epsilon` on :math:`1 - p`.

    Returns:
        ``(loss [B], metrics)``: ``logps/rejected`` (summed masked log-probs) and ``tokens``.

    References:
        Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training",
        arXiv:1908.04319 (token- and sequence-level unlikelihood); reference code
        ``custom/candidate_penalty_ce_loss.py`` (the clamp).

    Examples:
        >>> import jax.numpy as jnp, math
        >>> lp = jnp.log(jnp.array([[0.5, 0.75, 0.9]]))
        >>> loss, _ = unlikelihood(lp, jnp.array([[1.0, 1.0, 0.0]]))
        >>> print(round(float(loss[0]), 4), round(math.log(2) + math.log(4), 4))
        2.0794 2.0794
    """
    mask = _float(token_mask)
    keep = mask > 0
    # Masked slots may hold anything (even 0 or -inf); feed the log a harmless value instead.
    logp = jnp.where(keep, _float(policy_token_logps), -1.0)
    log_complement = _log1mexp(logp, max_x=math.log1p(-min_complement))
    loss = -jnp.sum(jnp.where(keep, log_complement, 0.0) * mask, axis=-1)
    metrics = {
        "logps/rejected": jnp.sum(jnp.where(keep, logp, 0.0) * mask, axis=-1),
        "tokens": jnp.sum(mask, axis=-1),
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}


def npo(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Negative Preference Optimization: a bounded, reference-anchored form of gradient ascent.

    .. math::
        \mathcal{L}(y) = -\frac{2}{\beta} \log \sigma\big(-\beta \rho(y)\big)
                       = \frac{2}{\beta} \log\Big(1 + \Big(\frac{\pi_\theta(y)}
                                                        {\pi_{\text{ref}}(y)}\Big)^{\beta}\Big)

    on summed log-probs of a response to forget. It equals :math:`(2/\beta)\log 2` at
    :math:`\pi_\theta = \pi_{\text{ref}}` and tends to gradient ascent on the NLL (plus a
    constant) as :math:`\beta \to 0`.

    Args:
        policy_logps: ``[N]`` summed completion log-probs of the negative responses.
        ref_logps: ``[N]`` the same under the reference (the model before unlearning).
        beta: inverse temperature :math:`\beta`.

    Returns:
        ``(loss [N], metrics)``: ``rewards/rejected`` (:math:`\beta\rho`), ``logps/rejected``.

    References:
        Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse
        to Effective Unlearning", arXiv:2404.05868 (the NPO loss).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = npo(jnp.array([-7.0]), jnp.array([-7.0]), beta=0.5)
        >>> print(round(float(loss[0]), 4))  # (2 / 0.5) log 2
        2.7726
    """
    logps = _float(policy_logps)
    rho = logps - _float(ref_logps)
    loss = (2.0 / beta) * jax.nn.softplus(beta * rho)
    metrics = {"rewards/rejected": beta * rho, "logps/rejected": logps}
    return loss, {k: _sg(v) for k, v in metrics.items()}


def npo_retain(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    lengths: ArrayLike,
    retain: ArrayLike,
    *,
    beta: float = 0.1,
    retain_weight: float = 1.0,
) -> tuple[Array, Metrics]:
    r"""NPO with a retain term (the paper's NPO+RT, the released code's ``npo_grad_diff``).

    .. math::
        \ell_i = \begin{cases}
            \frac{2}{\beta} \log\big(1 + (\pi_\theta(y_i) / \pi_{\text{ref}}(y_i))^{\beta}\big)
                & y_i \text{ to forget} \\
            -\lambda \, \log \pi_\theta(y_i) / |y_i| & y_i \text{ in the retain set}
        \end{cases}

    The released trainer adds the mean NPO loss of a forget batch to the mean token NLL of a
    retain batch (``npo_coeff = grad_diff_coeff = 1``, ``TOFU/dataloader.py``); here the two
    kinds are examples of one batch, told apart by the slot field ``retain``, so a batch with
    as many retain as forget examples averages to half the released loss (exactly, when the
    retain sequences have equal length). Without the retain term the policy hands the mass it
    takes off the forget set to whatever is next most likely; the retain set's likelihood keeps
    the rest of the distribution in place (Sec. 5, TOFU: NPO+RT keeps model utility).

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the same under the reference (read for forget examples only).
        lengths: ``[N]`` scored tokens per completion (the retain term is per token).
        retain: ``[N]`` 1.0 for retain-set examples, 0.0 for examples to forget.
        beta: NPO's inverse temperature :math:`\beta` (the released config: 0.1).
        retain_weight: :math:`\lambda`, the retain term's weight (released: 1.0).

    Returns:
        ``(loss [N], metrics)``: ``rewards/rejected`` (:math:`\beta\rho` of forget examples),
        ``logps/rejected`` and ``logps/retain`` (per-token log-prob of retain examples); the
        preset weights each metric by its own kind.

    References:
        Zhang, Lin, Bai, Mei 2024, arXiv:2404.05868, Sec. 5 (NPO+RT); released code
        ``licong-lin/negative-preference-optimization``, ``TOFU/dataloader.py`` and
        ``config/forget.yaml``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = npo_retain(jnp.array([-7.0, -6.0]), jnp.array([-7.0, 0.0]),
        ...                      jnp.array([3.0, 4.0]), jnp.array([0.0, 1.0]), beta=0.5)
        >>> print([round(float(x), 4) for x in loss])  # (2 / 0.5) log 2, then 6 / 4
        [2.7726, 1.5]
    """
    is_retain = _float(retain) > 0
    forget_loss, forget_metrics = npo(policy_logps, ref_logps, beta=beta)
    logps = _float(policy_logps)
    per_token = logps / jnp.maximum(_float(lengths), 1.0)
    loss = jnp.where(is_retain, -retain_weight * per_token, forget_loss)
    metrics = {**forget_metrics, "logps/retain": per_token}
    return loss, {k: _sg(v) for k, v in metrics.items()}


def unlikelihood_mle(
    policy_token_logps: ArrayLike,
    token_mask: ArrayLike,
    likelihood: ArrayLike,
    *,
    alpha: float = 1.0,
    min_complement: float = 1e-5,
) -> tuple[Array, Metrics]:
    r"""Unlikelihood on negative tokens mixed with likelihood on training data, per token.

    .. math::
        \ell_n = \frac{1}{|m_n|} \sum_t m_{n,t} \begin{cases}
            -\log p_\theta(y_{n,t} \mid \cdot) & n \text{ a likelihood (MLE) sequence} \\
            -\alpha \log\big(\max(1 - p_\theta(y_{n,t} \mid \cdot), \epsilon)\big)
                & n \text{ a sequence with negative tokens}
        \end{cases}

    with one example per completion slot weighted by its token count, so the batch loss is
    the sum over all scored tokens divided by their number, as fairseq normalises. Welleck et
    al. never train unlikelihood alone: the token-level objective is MLE plus
    :math:`\alpha` times the unlikelihood of candidate tokens (Eq. 4-5), and sequence-level
    fine-tuning takes an unlikelihood update or an MLE update on the training corpus with
    probability one half each (Sec. 5.2). Mixing both kinds of sequences in every batch, as
    here, weighs them by their scored tokens; it equals that alternation's expected gradient
    when both kinds carry as many scored tokens per batch.

    Args:
        policy_token_logps: ``[N, L]`` per-token log-probs of each completion slot.
        token_mask: ``[N, L]`` 1 on scored tokens (the negatives of an unlikelihood sequence,
            every target token of a likelihood sequence), 0 elsewhere.
        likelihood: ``[N]`` 1.0 for likelihood (MLE) sequences, 0.0 for unlikelihood ones.
        alpha: the unlikelihood term's weight :math:`\alpha` (the paper's 1.0).
        min_complement: clamp :math:`\epsilon` on :math:`1 - p` (the reference code's 1e-5).

    Returns:
        ``(loss [N], metrics)``: per-token ``logps/rejected`` of the unlikelihood sequences and
        ``logps/chosen`` of the likelihood ones.

    References:
        Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training",
        arXiv:1908.04319, Eq. 4-5 and Sec. 5.2; reference code
        ``custom/candidate_penalty_ce_loss.py`` and ``custom/sequence_penalty_loss.py``.

    Examples:
        >>> import jax.numpy as jnp, math
        >>> lp = jnp.log(jnp.array([[0.5, 0.75], [0.5, 0.25]]))
        >>> loss, _ = unlikelihood_mle(lp, jnp.ones((2, 2)), jnp.array([0.0, 1.0]))
        >>> print(round(float(loss[0]), 4), round((math.log(2) + math.log(4)) / 2, 4))
        1.0397 1.0397
        >>> print(round(float(loss[1]), 4), round((math.log(2) + math.log(4)) / 2, 4))
        1.0397 1.0397
    """
    mask = _float(token_mask)
    keep = mask > 0
    unlikely, _ = unlikelihood(policy_token_logps, token_mask, min_complement=min_complement)
    logp_sum = jnp.sum(jnp.where(keep, _float(policy_token_logps), 0.0) * mask, axis=-1)
    count = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    loss = jnp.where(_float(likelihood) > 0, -logp_sum, alpha * unlikely) / count
    mean_logp = logp_sum / count
    metrics = {"logps/rejected": mean_logp, "logps/chosen": mean_logp}
    return loss, {k: _sg(v) for k, v in metrics.items()}


def d2o(
    policy_sample_logps: ArrayLike,
    ref_sample_logps: ArrayLike,
    sample_valid: ArrayLike,
    policy_negative_logps: ArrayLike,
    ref_negative_logps: ArrayLike,
    *,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> tuple[Array, Metrics]:
    r"""Distributional Dispreference Optimization: self-generated samples versus a human negative.

    .. math::
        \mathcal{L} = -\log \sigma\Big(\frac{\beta}{K} \sum_{i=1}^{K}
            \log \frac{\pi_\theta(y_i \mid x)}{\pi_r^-(y_i \mid x)}
            - \alpha \log \frac{\pi_\theta(y_l \mid x)}{\pi_r^+(y_l \mid x)}\Big)

    The :math:`K` samples :math:`y_i \sim \pi_r` stand for the positive *distribution*; the
    average sits inside the sigmoid. The two log-ratios use separate references:
    ``ref_sample_logps`` is :math:`\pi_r^-` on the samples and ``ref_negative_logps`` is
    :math:`\pi_r^+` on the negative. :math:`K` is the number of valid samples of each prompt
    (at least 1).
    Defaults :math:`\beta = \alpha = 0.1` are from a third-party implementation (with
    :math:`K = 11`); the paper's values are unverified.

    Args:
        policy_sample_logps: ``[P, K]`` summed policy log-probs of the self-generated samples.
        ref_sample_logps: ``[P, K]`` the same under :math:`\pi_r^-`.
        sample_valid: ``[P, K]`` 1 for real samples.
        policy_negative_logps: ``[P]`` summed policy log-probs of the human negative.
        ref_negative_logps: ``[P]`` the same under :math:`\pi_r^+`.
        beta: weight :math:`\beta` of the sample term.
        alpha: weight :math:`\alpha` of the negative term.

    Returns:
        ``(loss [P], metrics)``: ``rewards/chosen`` (the sample term), ``rewards/rejected``
        (:math:`\alpha\rho(y_l)`), ``rewards/margin``, ``rewards/accuracy``, ``logps/rejected``.

    References:
        Duan et al. 2024, "Negating Negatives: Alignment with Human Negative Samples via
        Distributional Dispreference Optimization", arXiv:2403.03419 (the D2O loss; form as
        restated by the fbjax objectives reference note, to be checked against the paper).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = d2o(jnp.array([[-3.0, -5.0]]), jnp.array([[-4.0, -6.0]]), jnp.ones((1, 2)),
        ...               jnp.array([-9.0]), jnp.array([-9.0]), beta=1.0)
        >>> print(round(float(loss[0]), 4))  # softplus(-1)
        0.3133
    """
    v = _float(sample_valid) > 0
    vf = v.astype(jnp.float32)
    sample_rho = jnp.where(v, _float(policy_sample_logps) - _float(ref_sample_logps), 0.0)
    k = jnp.maximum(jnp.sum(vf, axis=-1), 1.0)
    sample_term = beta * jnp.sum(sample_rho * vf, axis=-1) / k
    neg_logps = _float(policy_negative_logps)
    negative_term = alpha * (neg_logps - _float(ref_negative_logps))
    margin = sample_term - negative_term
    loss = jax.nn.softplus(-margin)
    metrics = {
        "rewards/chosen": sample_term,
        "rewards/rejected": negative_term,
        "rewards/margin": margin,
        "rewards/accuracy": (margin > 0).astype(margin.dtype),
        "logps/rejected": neg_logps,
    }
    return loss, {k_: _sg(v_) for k_, v_ in metrics.items()}


def nft_group_accuracy(labels: ArrayLike, valid: ArrayLike) -> Array:
    r"""NFT's per-question accuracy :math:`\hat r_q`, broadcast back to each completion.

    .. math::
        \hat r_q = \frac{1}{|V_q|} \sum_{k \in V_q} c_{q,k}

    over the valid completions of each question (the reference computes it as
    ``(mean reward + 1) / 2`` for rewards in :math:`\{-1, 1\}`). The loss clamps it to
    :math:`[0.02, 0.98]`; the reference additionally drops all-correct and all-wrong groups.

    Args:
        labels: ``[G, K]`` 1.0 for verified-correct completions, 0.0 for wrong ones.
        valid: ``[G, K]`` 1 for real completions.

    Returns:
        ``[G, K]`` accuracy of each completion's group (stop-gradient; 0 for empty groups).

    References:
        Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
        Reasoning", arXiv:2505.18116; NVlabs/NFT ``compute_dapo_nft_outcome_advantage``.

    Examples:
        >>> import jax.numpy as jnp
        >>> acc = nft_group_accuracy(jnp.array([[1.0, 0.0, 0.0, 1.0]]), jnp.ones((1, 4)))
        >>> print(acc.tolist())
        [[0.5, 0.5, 0.5, 0.5]]
    """
    v = _sg(_float(valid))
    c = _sg(_float(labels))
    count = jnp.sum(v, axis=-1, keepdims=True)
    acc = jnp.sum(v * c, axis=-1, keepdims=True) / jnp.maximum(count, 1.0)
    return jnp.broadcast_to(acc, c.shape)


def _straight_through_min(x: Array, floor: float) -> Array:
    """``max(x, floor)`` in value, identity in gradient.

    Written ``sg(max(x, floor)) + (x - sg(x))``: the forward value is exactly ``max(x, floor)``
    because ``x - sg(x)`` is exactly 0. The reference's ``x + sg(max(x, floor) - x)`` rounds
    ``floor - x`` to the float32 grid of ``x`` and then adds ``x`` back, so for large negative
    ``x`` the result is not ``floor`` (at ``floor = 0.1``, ``x = -3e6`` it gives 0.125,
    ``-log`` 2.079 instead of 2.303).
    """
    return _sg(jnp.maximum(x, floor)) + (x - _sg(x))


def nft(
    policy_token_logps: ArrayLike,
    old_token_logps: ArrayLike,
    token_mask: ArrayLike,
    labels: ArrayLike,
    group_accuracy: ArrayLike,
    *,
    negative_weight: float = 1.0,
    negative_clip: float = 1.0,
    positive_clip: float = 0.0,
    normalize: int = 1,
    max_log_ratio: float = 10.0,
    accuracy_range: tuple[float, float] = (0.02, 0.98),
    token_normalizer: float = 1000.0,
) -> tuple[Array, Metrics]:
    r"""Negative-aware Fine-Tuning: likelihood of right answers, implicit negative policy on wrong.

    With the token ratio to the rollout (old) policy
    :math:`R_t = \exp(\min(\log\pi_\theta(o_t) - \log\pi_{\text{old}}(o_t), 10))`, the
    question's clamped accuracy :math:`\hat r \in [0.02, 0.98]` and correctness :math:`c`:

    .. math::
        \ell_t = c\,\big[-\log R_t\big]
               + (1 - c)\,\lambda\,\Big[-\log \operatorname{max_{sg}}\Big(
                    \frac{1 - \hat r R_t}{1 - \hat r}, \epsilon\Big)\Big], \qquad
        \mathcal{L} = \frac{n(\hat r)}{1000} \sum_t m_t \ell_t

    The negative term is the likelihood of the wrong answer under the implicit negative policy
    :math:`\pi^- = (\pi_{\text{old}} - \hat r \pi_\theta)/(1 - \hat r)`, relative to
    :math:`\pi_{\text{old}}`. :math:`\operatorname{max_{sg}}` clamps the value at
    :math:`\epsilon` (``negative_clip``) but passes the gradient through unchanged, so where it is
    active the gradient is :math:`-\nabla x / \epsilon` rather than 0. The same straight-through
    clamp at ``positive_clip`` applies to :math:`R_t` (0 = none), computed in log space so a tiny
    :math:`R_t` cannot underflow. ``normalize`` picks :math:`n(\hat r)`: 1 gives
    :math:`1 - \hat r` (default), 2 gives :math:`\sqrt{(1-\hat r)/\hat r}`, 0 gives 1. On-policy
    (:math:`R = 1`) the per-token gradients are :math:`-(1 - \hat r)\nabla\log\pi_\theta` for
    correct and :math:`+\hat r\,\nabla\log\pi_\theta` for wrong answers (with the defaults).

    The reference sums rows and divides by the constant 1000 (not a token mean); here each row
    carries its own sum over tokens divided by ``token_normalizer`` and the training step
    averages rows, which differs from the reference's batch sum by the constant batch size.

    Args:
        policy_token_logps: ``[B, L]`` per-token log-probs under the policy being trained.
        old_token_logps: ``[B, L]`` per-token log-probs under the rollout policy.
        token_mask: ``[B, L]`` 1 on response tokens.
        labels: ``[B]`` 1.0 if the verifier accepted the response, else 0.0.
        group_accuracy: ``[B]`` the question's accuracy :math:`\hat r` (see
            :func:`nft_group_accuracy`).
        negative_weight: :math:`\lambda` (0 gives rejection-sampling fine-tuning).
        negative_clip: :math:`\epsilon > 0`, floor of the negative ratio (reference: 1.0).
        positive_clip: floor of :math:`R_t` in the positive term (reference: 0.0, none).
        normalize: 0, 1 or 2, the choice of :math:`n(\hat r)` above.
        max_log_ratio: cap on the log-ratio before the exponential (zero gradient above it).
        accuracy_range: clamp of :math:`\hat r`.
        token_normalizer: constant divisor of the token sum.

    Returns:
        ``(loss [B], metrics)``: ``kl`` (masked mean of :math:`\log\pi_{\text{old}} -
        \log\pi_\theta`, the reference's ``ppo_kl``), ``ratio`` (masked mean of :math:`R_t`)
        and ``logps/chosen``, ``logps/rejected`` (each row's summed log-prob, to be averaged
        over the correct / wrong rows: ``fbjax.train.presets.nft`` weights them so).

    References:
        Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
        Reasoning", arXiv:2505.18116 (the NFT objective); NVlabs/NFT
        ``dp_actor.py: update_policy``.

    Examples:
        >>> import jax.numpy as jnp
        >>> lp = jnp.full((2, 2), -1.0)
        >>> loss, _ = nft(lp, lp, jnp.ones((2, 2)), jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))
        >>> print(loss.tolist())  # on-policy: -log R = 0 and -log 1 = 0
        [0.0, 0.0]
    """
    if negative_clip <= 0:
        raise ValueError(f"negative_clip must be > 0, got {negative_clip}")
    if normalize not in (0, 1, 2):
        raise ValueError(f"normalize must be 0, 1 or 2, got {normalize}")
    mask = _float(token_mask)
    keep = mask > 0
    log_ratio = jnp.where(keep, _float(policy_token_logps) - _float(old_token_logps), 0.0)
    capped = jnp.minimum(log_ratio, max_log_ratio)
    ratio = jnp.exp(capped)
    lo, hi = accuracy_range
    acc = jnp.clip(_sg(_float(group_accuracy)), lo, hi)[:, None]
    c = _float(labels)[:, None]

    # -log max_sg(R, floor) in log space: value -max(log R, log floor), gradient -R/max(R, floor).
    log_floor = math.log(positive_clip) if positive_clip > 0 else -jnp.inf
    top = _sg(jnp.maximum(capped, log_floor))
    positive = -(top + _sg(jnp.exp(capped - top)) * (capped - _sg(capped)))
    proxy = (1.0 - acc * ratio) / (1.0 - acc)
    negative = -jnp.log(_straight_through_min(proxy, negative_clip))
    per_token = c * positive + (1.0 - c) * negative_weight * negative
    if normalize == 1:
        per_token = per_token * (1.0 - acc)
    elif normalize == 2:
        per_token = per_token * jnp.sqrt((1.0 - acc) / acc)
    loss = jnp.sum(jnp.where(keep, per_token, 0.0) * mask, axis=-1) / token_normalizer
    tokens = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    row_logps = jnp.sum(jnp.where(keep, _float(policy_token_logps), 0.0) * mask, axis=-1)
    metrics = {
        "kl": -jnp.sum(log_ratio * mask, axis=-1) / tokens,
        "ratio": jnp.sum(jnp.where(keep, ratio, 0.0) * mask, axis=-1) / tokens,
        # Averaged over the correct (chosen) or wrong (rejected) rows only by the caller.
        "logps/chosen": row_logps,
        "logps/rejected": row_logps,
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}
