r"""Language-feedback objectives: the losses of methods that learn from feedback given in words.

Most language-feedback methods change the *data* (``fbjax.data.language`` turns critiques,
judgments and refinements into templated sequences) and keep a likelihood loss; this module holds
the losses that are more than plain likelihood:

* :func:`nll_with_pretraining` - Chain of Hindsight / LeTI: likelihood of the feedback-templated
  sequences plus an optional pretraining-data term.
* :func:`cut` (with :func:`cut_inappropriate_tokens`) - CUT: likelihood under the judgment,
  unlikelihood on the tokens that the judgment makes more likely.
* :func:`c3po` - C3PO: DPO on in-scope prompts, likelihood of the original model's outputs on
  near- and out-of-scope prompts.
* :func:`sami` - SAMI: symmetric InfoNCE over a (constitution x response) log-prob matrix.
* :func:`alt` - ALT: feedback-conditioned likelihood + KL(ref || policy) - entropy, per token.
* :func:`token_weighted` - token-level rewards from critiques (Fine-Grained RLHF, Text2Grad):
  likelihood on tokens with positive weight, unlikelihood on tokens with negative weight.

Conventions as in the other families: positional arrays, keyword-only hyperparameters with the
papers' defaults, unreduced per-example losses and stop-gradient metrics. Masked entries never
influence a value or a gradient, whatever they hold.
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

# Finite stand-in for -inf in masked log-sum-exps (see fbjax.objectives.preference._MASKED).
_MASKED = -1e9

# C3PO's slot field ``scope``: what each completion is. 0 is left unused so that a group written
# without the field (the packer fills missing fields with 0) is never mistaken for data.
SCOPE_IN_CHOSEN = 1.0  # in-scope prompt, revised completion (DPO chosen)
SCOPE_IN_REJECTED = 2.0  # in-scope prompt, original completion (DPO rejected)
SCOPE_NEAR = 3.0  # near-scope prompt, original model's completion (likelihood)
SCOPE_OUT = 4.0  # out-of-scope prompt, original model's completion (likelihood)


def _masked_mean(values: Array, mask: Array, axis=-1) -> Array:
    """Mean of ``values`` over ``mask > 0`` entries (0 where there are none)."""
    keep = mask > 0
    total = jnp.sum(jnp.where(keep, values, 0.0) * mask, axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1e-9)


# ----------------------------------------------------------------------------- CoH / LeTI


def nll_with_pretraining(
    policy_logps: ArrayLike,
    lengths: ArrayLike,
    pretraining: ArrayLike,
    *,
    pretraining_weight: float = 1.0,
) -> tuple[Array, Metrics]:
    r"""Token-mean likelihood of feedback-templated sequences, mixed with pretraining text.

    .. math::
        \ell_i = w_i \cdot \Big(-\frac{1}{|y_i|}\sum_t \log \pi_\theta(y_{i,t} \mid y_{i,<t})\Big),
        \qquad w_i = \begin{cases} \lambda & \text{pretraining sequence} \\
                                   1 & \text{feedback sequence} \end{cases}

    Chain of Hindsight trains on sequences that join outputs with feedback phrases (loss on the
    outputs only, through the template's loss mask) and adds the likelihood of pretraining data
    as a regulariser; LeTI likewise mixes its feedback-conditioned sequences with pretraining
    text. With token-count example weights (``fbjax.train.language_inputs.sequences_with_kind``)
    the batch loss is :math:`(\sum_{fb} n_i\,\text{nll}_i + \lambda \sum_{pt} n_i\,\text{nll}_i)
    / \sum_i n_i`, so the mixture proportion in the data and :math:`\lambda` set the balance.

    Args:
        policy_logps: ``[N]`` summed log-probs of each sequence's trained tokens.
        lengths: ``[N]`` trained token counts (sums of the loss mask).
        pretraining: ``[N]`` 1.0 for pretraining sequences, 0.0 for feedback sequences.
        pretraining_weight: :math:`\lambda`, the weight of the pretraining term.

    Returns:
        ``(loss [N], metrics)`` with ``logps/policy`` (per-token log-prob) and ``pretraining``.

    References:
        Liu, Sferrazza, Abbeel 2023, "Chain of Hindsight Aligns Language Models with Feedback",
        arXiv:2302.02676, Sec. 3 (training objective with the pretraining regulariser).
        Wang et al. 2023, "LeTI: Learning to Generate from Textual Interactions",
        arXiv:2305.10314, Sec. 2 (LM objective with pretraining data mixed in).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = nll_with_pretraining(jnp.array([-6.0, -6.0]), jnp.array([3.0, 2.0]),
        ...                                jnp.array([0.0, 1.0]), pretraining_weight=0.5)
        >>> print(loss.tolist())  # [6 / 3, 0.5 * 6 / 2]
        [2.0, 1.5]
    """
    logps = _float(policy_logps)
    avg = logps / jnp.maximum(_float(lengths), 1.0)
    is_pt = _float(pretraining) > 0
    weight = jnp.where(is_pt, pretraining_weight, 1.0)
    metrics = {"logps/policy": avg, "pretraining": is_pt.astype(avg.dtype)}
    return -weight * avg, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- CUT


def cut_inappropriate_tokens(
    policy_token_logps_plain: ArrayLike,
    policy_token_logps_judged: ArrayLike,
    token_mask: ArrayLike,
    *,
    threshold: float = 1.1,
) -> Array:
    r"""CUT's detector: tokens that the (negative) judgment makes more likely are inappropriate.

    .. math::
        F = \{t : p_\theta(y_t \mid x, j, y_{<t}) > \lambda\, p_\theta(y_t \mid x, y_{<t})\}

    A negative judgment names what is wrong, so conditioning on it raises the probability of
    exactly the tokens it points at; a ratio :math:`\lambda \ge 1` above 1 leaves a margin so
    that noise does not flag tokens (CUT's released code: ``threshold=1.1``). Compared in log
    space: :math:`\log p_j - \log p > \log\lambda`. No gradient flows through the detection.

    Args:
        policy_token_logps_plain: ``[P, T]`` :math:`\log p(y_t \mid x, y_{<t})`.
        policy_token_logps_judged: ``[P, T]`` :math:`\log p(y_t \mid x, j, y_{<t})`, aligned
            token for token with the plain copy.
        token_mask: ``[P, T]`` 1 on the response tokens scored in both copies.
        threshold: :math:`\lambda \ge 1`.

    Returns:
        ``[P, T]`` float 1.0 on inappropriate tokens, 0.0 elsewhere (stop-gradient).

    References:
        Xu, Cai, Zhang, Lam, Shi 2023, "Reasons to Reject? Aligning Language Models with
        Judgments", arXiv:2312.14591, Sec. 4 (inappropriate token detection).

    Examples:
        >>> import jax.numpy as jnp
        >>> plain = jnp.log(jnp.array([[0.5, 0.2, 0.4]]))
        >>> judged = jnp.log(jnp.array([[0.5, 0.6, 0.1]]))
        >>> print(cut_inappropriate_tokens(plain, judged, jnp.ones((1, 3))).tolist())
        [[0.0, 1.0, 0.0]]
    """
    if threshold < 1.0:
        raise ValueError(f"CUT's threshold must be >= 1 (a probability ratio), got {threshold}")
    keep = _float(token_mask) > 0
    gap = _float(policy_token_logps_judged) - _float(policy_token_logps_plain)
    flagged = keep & (jnp.where(keep, gap, 0.0) > math.log(threshold))
    return _sg(flagged.astype(jnp.float32))


def cut(
    policy_token_logps_plain: ArrayLike,
    policy_token_logps_judged: ArrayLike,
    token_mask: ArrayLike,
    *,
    threshold: float = 1.1,
    unlikelihood_weight: float = 1.0,
    min_complement: float = 1e-5,
    flag_final_token: bool = True,
) -> tuple[Array, Metrics]:
    r"""Contrastive Unlikelihood Training on one (plain, judgment-conditioned) response pair.

    With :math:`F` from :func:`cut_inappropriate_tokens` and :math:`T` response tokens:

    .. math::
        \mathcal{L} = \frac{1}{2}\Big[\underbrace{-\frac{1}{T}\sum_t \log p(y_t \mid x, j,
            y_{<t})}_{\text{Align-N: likelihood under the judgment}}
          + \underbrace{\frac{1}{T}\sum_{t} \Big(\mathbb{1}_{t \in F}\,\alpha\,
            \big(-\log(1 - p(y_t \mid x, y_{<t}))\big)
            + \mathbb{1}_{t \notin F}\,\big(-\log p(y_t \mid x, y_{<t})\big)\Big)}_{
            \text{Misalign: unlikelihood on } F \text{, likelihood elsewhere}}\Big]

    The first term teaches the model what a response *consistent with the judgment* looks like;
    the second pushes down, without the judgment, only the tokens the judgment blames, and keeps
    the rest of the response likely. For a response with a positive judgment (Align-P) both
    copies are built under the plain prompt (``fbjax.data.language.cut_groups``): the ratio is
    then exactly 1, nothing is flagged, and the loss is the plain likelihood. The halves are
    averaged as in CUT's released code. :math:`1 - p` is clamped at ``min_complement``.

    Args:
        policy_token_logps_plain: ``[P, T]`` per-token log-probs of the response under the plain
            prompt :math:`x` (``fbjax.train.language_inputs.aligned_pairs``).
        policy_token_logps_judged: ``[P, T]`` the same tokens under the prompt with the judgment.
        token_mask: ``[P, T]`` 1 on response tokens present in both copies.
        threshold: the detector's ratio :math:`\lambda \ge 1` (CUT: 1.1).
        unlikelihood_weight: :math:`\alpha`, weight of the unlikelihood terms (CUT: 1).
        min_complement: clamp on :math:`1 - p`.
        flag_final_token: whether the response's last scored token (its EOS) may be flagged,
            as in CUT's released code. When a negative judgment makes the end of a wrong answer
            more likely, unlikelihood on it teaches the model not to stop: on the simulator
            (seed 2) samples ran on past the answer ("2+17=" -> "19106141") and the oracle
            reward fell from 0.497 to 0.329. ``False`` keeps the end out of :math:`F`.

    Returns:
        ``(loss [P], metrics)``: ``cut/flagged_fraction``, ``logps/plain`` and ``logps/judged``
        (per-token means), ``logps/flagged`` (mean plain log-prob of flagged tokens; 0 if none).

    References:
        Xu, Cai, Zhang, Lam, Shi 2023, "Reasons to Reject? Aligning Language Models with
        Judgments", arXiv:2312.14591, Sec. 4 (CUT); threshold and weight from the released
        training script (``threshold=1.1``, ``weight_unlike=1``).

    Examples:
        >>> import jax.numpy as jnp, math
        >>> plain = jnp.log(jnp.array([[0.5, 0.2]]))
        >>> judged = jnp.log(jnp.array([[0.5, 0.6]]))  # the judgment blames token 1
        >>> loss, _ = cut(plain, judged, jnp.ones((1, 2)))
        >>> want = 0.5 * ((-math.log(0.5) - math.log(0.6)) / 2
        ...               + (-math.log(0.5) - math.log(1 - 0.2)) / 2)
        >>> print(round(float(loss[0]), 5) == round(want, 5))
        True
    """
    mask = _float(token_mask)
    keep = mask > 0
    plain = jnp.where(keep, _float(policy_token_logps_plain), -1.0)
    judged = jnp.where(keep, _float(policy_token_logps_judged), -1.0)
    flagged = cut_inappropriate_tokens(plain, judged, mask, threshold=threshold) > 0
    if not flag_final_token:
        position = jnp.arange(mask.shape[-1])
        last = jnp.max(jnp.where(keep, position, -1), axis=-1, keepdims=True)
        flagged = flagged & (position != last)
    log_complement = _log1mexp(plain, max_x=math.log1p(-min_complement))
    plain_term = jnp.where(flagged, -unlikelihood_weight * log_complement, -plain)
    loss = 0.5 * (_masked_mean(-judged, mask) + _masked_mean(plain_term, mask))
    flagged_f = flagged.astype(jnp.float32)
    metrics = {
        "cut/flagged_fraction": _masked_mean(flagged_f, mask),
        "logps/plain": _masked_mean(plain, mask),
        "logps/judged": _masked_mean(judged, mask),
        "logps/flagged": _masked_mean(plain, mask * flagged_f),
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- C3PO


def c3po(
    policy_logps: ArrayLike,
    policy_partner_logps: ArrayLike,
    ref_logps: ArrayLike,
    ref_partner_logps: ArrayLike,
    lengths: ArrayLike,
    scope: ArrayLike,
    *,
    beta: float = 0.1,
    near_scope_weight: float = 0.1,
    out_of_scope_weight: float = 0.2,
) -> tuple[Array, Metrics]:
    r"""C3PO: apply verbal feedback where it is relevant, keep the original model elsewhere.

    One loss over a batch that mixes three kinds of examples (slot field ``scope``):

    .. math::
        \ell = \begin{cases}
          -\log\sigma\big(\beta[\rho(y^+) - \rho(y^-)]\big) & x \text{ in scope: revised } y^+
              \text{ vs original } y^- \\
          \lambda_1 \big(-\tfrac{1}{|y|}\log \pi_\theta(y \mid x)\big) & x \text{ near scope},
              \ y \sim \pi_0(\cdot \mid x) \\
          \lambda_2 \big(-\tfrac{1}{|y|}\log \pi_\theta(y \mid x)\big) & x \text{ out of scope},
              \ y \sim \pi_0(\cdot \mid x)
        \end{cases}

    with :math:`\rho(y) = \log\pi_\theta(y) - \log\pi_{\text{ref}}(y)`. The likelihood of the
    *original* model's completions on prompts where the feedback does not apply is what keeps
    the feedback from overgeneralising. The released trainer (``src/lcdpo.py``, config
    ``configs/config_lcdpo.json``) adds three batch means, :math:`\text{DPO} + \lambda_1
    \text{CE}_{near} + \lambda_2 \text{CE}_{out}` (CE the token-mean cross-entropy; its
    distillation term is off, ``lcdpo_lambda = 0``); the step here averages over all examples of
    a batch, so with in-, near- and out-of-scope examples in proportions :math:`q_{in}, q_{near},
    q_{out}` it minimises :math:`q_{in}\text{DPO} + q_{near}\lambda_1\text{CE}_{near} +
    q_{out}\lambda_2\text{CE}_{out}`, the reference's loss times :math:`1/3` for the paper's
    1:1:1 mix. Defaults as released: DPO :math:`\beta = 0.1`, :math:`\lambda_1 = 0.1`
    (``lcdpo_sigma_hard``, near scope), :math:`\lambda_2 = 0.2` (``lcdpo_sigma_soft``, out of
    scope).

    Args:
        policy_logps: ``[N]`` summed completion log-probs of each slot.
        policy_partner_logps: ``[N]`` the same for the next slot (the in-scope pair's rejected
            completion, when this slot is its chosen one).
        ref_logps: ``[N]`` ``policy_logps`` under the reference (the original model).
        ref_partner_logps: ``[N]`` ``policy_partner_logps`` under the reference.
        lengths: ``[N]`` completion token counts.
        scope: ``[N]`` ``SCOPE_IN_CHOSEN``, ``SCOPE_IN_REJECTED`` (loss 0: read as a partner),
            ``SCOPE_NEAR`` or ``SCOPE_OUT``.
        beta: DPO inverse temperature :math:`\beta`.
        near_scope_weight: :math:`\lambda_1` (released: 0.1).
        out_of_scope_weight: :math:`\lambda_2` (released: 0.2).

    Returns:
        ``(loss [N], metrics)``: ``rewards/margin``, ``rewards/accuracy`` (in-scope pairs),
        ``logps/near_scope`` and ``logps/out_of_scope`` (per-token log-probs). Reduce them over
        their own kind of example with ``Objective.metric_weights``.

    References:
        Stephan, Khazatsky, Mitchell, Chen, Hsu, Sharma, Finn 2024, "RLVF: Learning from Verbal
        Feedback without Overgeneralization", arXiv:2402.10893, Sec. 4 (C3PO objective);
        austrian-code-wizard/c3po ``src/lcdpo.py``, ``configs/config_lcdpo.json`` (weights).

    Examples:
        >>> import jax.numpy as jnp, math
        >>> lp = jnp.array([-4.0, -6.0, -3.0])
        >>> partner = jnp.array([-6.0, 0.0, 0.0])
        >>> loss, _ = c3po(lp, partner, jnp.full(3, -5.0), jnp.array([-5.0, 0.0, 0.0]),
        ...                jnp.array([2.0, 2.0, 3.0]), jnp.array([1.0, 2.0, 4.0]), beta=1.0)
        >>> print([round(v, 4) for v in loss.tolist()])  # softplus(-2), 0, 0.2 * 3 / 3 (out)
        [0.1269, 0.0, 0.2]
    """
    kind = _float(scope)
    logps = _float(policy_logps)
    rho = logps - _float(ref_logps)
    rho_partner = _float(policy_partner_logps) - _float(ref_partner_logps)
    in_scope = kind == SCOPE_IN_CHOSEN
    margin = jnp.where(in_scope, beta * (rho - rho_partner), 0.0)
    dpo = jax.nn.softplus(-margin)
    per_token = logps / jnp.maximum(_float(lengths), 1.0)
    loss = jnp.where(
        in_scope,
        dpo,
        jnp.where(
            kind == SCOPE_NEAR,
            -near_scope_weight * per_token,
            jnp.where(kind == SCOPE_OUT, -out_of_scope_weight * per_token, 0.0),
        ),
    )
    metrics = {
        "rewards/margin": margin,
        "rewards/accuracy": (margin > 0).astype(margin.dtype),
        "logps/near_scope": per_token,
        "logps/out_of_scope": per_token,
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- SAMI


def sami(
    logp_matrix: ArrayLike,
    lengths: ArrayLike,
    valid: ArrayLike,
    *,
    per_token: bool = True,
) -> tuple[Array, Metrics]:
    r"""SAMI: symmetric InfoNCE between constitutions and the responses sampled under them.

    For a query :math:`x`, constitutions :math:`c_1..c_n` and responses :math:`y_j` sampled
    under :math:`c_j`, with :math:`L_{ij} = \frac{1}{|y_j|}\log\pi_\theta(y_j \mid x, c_i)`
    (the *mean* per-token log-prob, the response's EOS not scored):

    .. math::
        \mathcal{L} = \frac{1}{2}\Big[\frac{1}{n}\sum_i -\log
            \frac{e^{L_{ii}}}{\sum_j e^{L_{ij}}}
          + \frac{1}{n}\sum_j -\log \frac{e^{L_{jj}}}{\sum_i e^{L_{ij}}}\Big]

    Rows ask "which response was written under :math:`c_i`?", columns "which constitution
    produced :math:`y_j`?"; minimising both maximises a lower bound on the conditional mutual
    information :math:`I(y; c \mid x)`. Invalid entries (padding) are excluded from both
    normalisers; a row or column whose diagonal entry is invalid is skipped.

    The released code averages token log-probs (``get_batch_logprobs``) and masks the EOS
    (``_get_mask``; ``fbjax.data.language.sami_groups`` leaves it unscored). With summed
    log-probs (``per_token=False``, kept for comparison) a row's softmax follows response
    *length*: a 40-token response has a far lower sum than a 12-token one under every
    constitution, so the row of the short response is solved by length alone and the row of
    the long one cannot be; for two responses of 12 and 40 tokens at -1.0 nat per token under
    their own constitution and -1.5 under the other, the mean gives
    :math:`\log(1 + e^{-0.5}) = 0.474` and the sum 5.50.

    Args:
        logp_matrix: ``[G, n, n]`` summed response log-probs :math:`\log\pi_\theta(y_j \mid
            x, c_i)` per query (``fbjax.train.language_inputs.sami_matrix`` builds it).
        lengths: ``[G, n, n]`` scored token counts of the same entries.
        valid: ``[G, n, n]`` 1 for real entries.
        per_token: divide by ``lengths`` (the released code; default) or use the sums.

    Returns:
        ``(loss [G], metrics)``: ``sami/row_accuracy`` (rows whose argmax is the diagonal) and
        ``sami/diagonal_margin`` (mean diagonal minus mean off-diagonal :math:`L`).

    References:
        Fränken, Zelikman, Rafailov, Gandhi, Gerstenberg, Goodman 2024, "Self-Supervised
        Alignment with Mutual Information: Learning to Follow Principles without Preference
        Labels", arXiv:2404.14313, Sec. 3 (SAMI objective); janphilippfranken/sami
        ``src/sami/trainers/sami_trainer.py`` (token means, EOS masked).

    Examples:
        >>> import jax.numpy as jnp, math
        >>> L = jnp.log(jnp.array([[[0.6, 0.2], [0.2, 0.6]]]))
        >>> loss, _ = sami(L, jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)))
        >>> print(round(float(loss[0]), 4), round(-math.log(0.75), 4))  # rows = columns here
        0.2877 0.2877
    """
    if per_token:
        logp_matrix = _float(logp_matrix) / jnp.maximum(_float(lengths), 1.0)
    lm = _float(logp_matrix)
    v = _float(valid) > 0
    n = lm.shape[-1]
    masked = jnp.where(v, lm, _MASKED)
    diag = jnp.diagonal(masked, axis1=-2, axis2=-1)  # [G, n]
    diag_valid = jnp.diagonal(v, axis1=-2, axis2=-1).astype(jnp.float32)
    row_ce = jax.nn.logsumexp(masked, axis=-1) - diag  # softmax over responses j
    col_ce = jax.nn.logsumexp(masked, axis=-2) - diag  # softmax over constitutions i
    loss = 0.5 * (_masked_mean(row_ce, diag_valid) + _masked_mean(col_ce, diag_valid))
    eye = jnp.eye(n, dtype=bool)
    vf = v.astype(jnp.float32)
    off = vf * (~eye)
    lm0 = jnp.where(v, lm, 0.0)
    diag_mean = _masked_mean(jnp.diagonal(lm0, axis1=-2, axis2=-1), diag_valid)
    off_mean = jnp.sum(lm0 * off, axis=(-2, -1)) / jnp.maximum(jnp.sum(off, axis=(-2, -1)), 1.0)
    row_hit = (jnp.argmax(masked, axis=-1) == jnp.arange(n)).astype(jnp.float32)
    metrics = {
        "sami/row_accuracy": _masked_mean(row_hit, diag_valid),
        "sami/diagonal_margin": diag_mean - off_mean,
    }
    return loss, {k: _sg(v_) for k, v_ in metrics.items()}


# ----------------------------------------------------------------------------- ALT


def alt(
    policy_token_logps: ArrayLike,
    token_kl: ArrayLike,
    token_entropy: ArrayLike,
    token_mask: ArrayLike,
    *,
    kl_coef: float = 0.05,
    entropy_coef: float = 0.06,
) -> tuple[Array, Metrics]:
    r"""ALT: likelihood of feedback-conditioned completions, a KL anchor and an entropy bonus.

    Over the completion tokens :math:`t` of a row (each token's full next-token distribution):

    .. math::
        \ell = \frac{1}{T}\sum_t \Big(-\log\pi_\theta(y_t \mid f, x, y_{<t})
            + \beta_{KL}\,\mathrm{KL}\big(\pi_{\text{ref}}(\cdot \mid \ldots)
              \,\Vert\, \pi_\theta(\cdot \mid \ldots)\big)
            - \beta_H\,\mathcal{H}\big(\pi_\theta(\cdot \mid \ldots)\big)\Big)

    as the released trainer (``alt/trainer/alt_trainer.py``, inherited from Quark) computes it:
    ``reduce_mean(lm_loss + kl_coef * kl - entropy_coef * entropy, masks)``, a mean over all
    completion tokens of the batch, which the step's token-count row weights
    (``fbjax.train.language_inputs.token_distributions``) reproduce. Released coefficients
    (every ALT / Quark config): ``kl_coef = 0.05``, ``entropy_coef = 0.06``. The KL is
    token-level over the whole vocabulary, with the reference (the initial policy) under the
    same feedback-conditioned context.

    Args:
        policy_token_logps: ``[B, L]`` log-probs of the completion tokens.
        token_kl: ``[B, L]`` :math:`\mathrm{KL}(\pi_{\text{ref}} \Vert \pi_\theta)` of
            each token's predicting distribution.
        token_entropy: ``[B, L]`` entropy of :math:`\pi_\theta` there.
        token_mask: ``[B, L]`` 1 on completion tokens.
        kl_coef: :math:`\beta_{KL}`.
        entropy_coef: :math:`\beta_H`.

    Returns:
        ``(loss [B], metrics)``: ``logps/policy``, ``kl`` and ``entropy`` (token means).

    References:
        Lloret, Dhuliawala, Murugesan, Sachan 2024, "Towards Aligning Language Models with
        Textual Feedback", arXiv:2407.16970, Sec. 3; sauc-abadal/ALT
        ``alt/trainer/alt_trainer.py`` and ``tasks/*/configs/*.yaml`` (coefficients).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss, _ = alt(jnp.array([[-1.0, -3.0]]), jnp.array([[0.2, 0.0]]),
        ...               jnp.array([[1.0, 2.0]]), jnp.ones((1, 2)))
        >>> print(round(float(loss[0]), 4))  # (1 + 3) / 2 + 0.05 * 0.1 - 0.06 * 1.5
        1.915
    """
    mask = _float(token_mask)
    per_token_nll = -_float(policy_token_logps)
    kl = _float(token_kl)
    ent = _float(token_entropy)
    per_token = per_token_nll + kl_coef * kl - entropy_coef * ent
    loss = _masked_mean(per_token, mask)
    metrics = {
        "logps/policy": _masked_mean(-per_token_nll, mask),
        "kl": _masked_mean(kl, mask),
        "entropy": _masked_mean(ent, mask),
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- token rewards


def token_weighted(
    policy_token_logps: ArrayLike,
    token_weights: ArrayLike,
    *,
    min_complement: float = 1e-5,
) -> tuple[Array, Metrics]:
    r"""Token-level rewards as weights: likelihood where :math:`w_t > 0`, unlikelihood where
    :math:`w_t < 0`.

    .. math::
        \ell = \frac{1}{\sum_t |w_t|}\sum_t \Big([w_t]_+\,\big(-\log p_\theta(y_t \mid x,
            y_{<t})\big) + [-w_t]_+\,\big(-\log(1 - p_\theta(y_t \mid x, y_{<t}))\big)\Big)

    Critiques aligned to spans of a response (``fbjax.data.language.token_reward_groups``:
    -1 on faulty tokens, +1 elsewhere by default) become per-token weights, so a wrong digit is
    pushed down while the correct tokens around it are reinforced instead of penalising the whole
    response as a sequence-level reward would. This is the offline, supervised form of the
    dense-reward idea of Fine-Grained RLHF and Text2Grad (which use per-token rewards in PPO and
    per-token gradient edits respectively). With row weights :math:`\sum_t |w_t|`
    (``fbjax.train.language_inputs.signed_tokens``) the batch loss is the mean over weighted
    tokens. :math:`1 - p` is clamped at ``min_complement``.

    Args:
        policy_token_logps: ``[B, L]`` per-token log-probs.
        token_weights: ``[B, L]`` signed weights :math:`w_t` (0 = not scored).
        min_complement: clamp on :math:`1 - p`.

    Returns:
        ``(loss [B], metrics)``: ``logps/positive`` and ``logps/negative`` (mean log-probs of
        the reinforced and the penalised tokens; 0 where a row has none).

    References:
        Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards for Language Model
        Training", arXiv:2306.01693, Sec. 2 (dense, span-level rewards).
        "Text2Grad: Reinforcement Learning from Natural Language Feedback", arXiv:2505.22338
        (critique spans -> token-level signals).
        Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training",
        arXiv:1908.04319, Eq. 4 (the unlikelihood term).

    Examples:
        >>> import jax.numpy as jnp, math
        >>> lp = jnp.log(jnp.array([[0.5, 0.25]]))
        >>> loss, _ = token_weighted(lp, jnp.array([[1.0, -1.0]]))
        >>> print(round(float(loss[0]), 4), round((math.log(2) - math.log(0.75)) / 2, 4))
        0.4904 0.4904
    """
    w = _float(token_weights)
    scored = w != 0
    lp = jnp.where(scored, _float(policy_token_logps), -1.0)
    pos = jnp.maximum(w, 0.0)
    neg = jnp.maximum(-w, 0.0)
    log_complement = _log1mexp(lp, max_x=math.log1p(-min_complement))
    per_token = jnp.where(scored, -pos * lp - neg * log_complement, 0.0)
    loss = jnp.sum(per_token, axis=-1) / jnp.maximum(jnp.sum(jnp.abs(w), axis=-1), 1e-9)
    metrics = {
        "logps/positive": _masked_mean(lp, (w > 0).astype(jnp.float32)),
        "logps/negative": _masked_mean(lp, (w < 0).astype(jnp.float32)),
    }
    return loss, {k: _sg(v) for k, v in metrics.items()}
