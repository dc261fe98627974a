"""Batch layouts and :class:`~fbjax.train.objective.Objective` bindings for language feedback.

The layouts read the step's :class:`~fbjax.train.objective.SequenceStats` (nothing else; the
step is shared with every other objective) and return the named arrays the losses of
``fbjax.objectives.language`` ask for:

* :func:`sequences_with_kind` - per-sequence likelihood with a ``pretraining`` flag (CoH, LeTI).
* :func:`aligned_pairs` - CUT: the per-token log-probs of the two copies of a response (plain
  and judgment-conditioned prompt, consecutive slots) gathered into aligned ``[P, T]`` arrays.
* :func:`scoped_pairs` - C3PO: each slot with the slot after it (its DPO partner) and ``scope``.
* :func:`sami_matrix` - SAMI: ``inputs.listwise(n * n)`` reshaped to ``[G, n, n]``.
* :func:`signed_tokens` - token-level rewards carried as signed loss-mask weights.
* :func:`token_distributions` - ALT: per-token log-probs, KL(ref || policy) and entropy.

The bindings pair each loss with its layout, as ``fbjax.train.presets`` does for the other
families; ``fbjax.train.catalog`` lists them with the other objectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fbjax.objectives import language, supervised
from fbjax.objectives.language import SCOPE_IN_CHOSEN, SCOPE_NEAR, SCOPE_OUT
from fbjax.train import inputs
from fbjax.train.inputs import slot_token_grid
from fbjax.train.objective import Objective, SequenceStats

Array = jax.Array


# ----------------------------------------------------------------------------- layouts


def sequences_with_kind(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """:func:`fbjax.train.inputs.sequences` plus a ``pretraining`` flag per sequence (0 when the
    data has no pretraining groups), token-count weights."""
    arrays, weights = inputs.sequences(stats)
    arrays.setdefault("pretraining", jnp.zeros_like(stats.valid))
    return arrays, weights


def aligned_pairs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """CUT: slots ``(2i, 2i + 1)`` hold one response under the plain and under the
    judgment-conditioned prompt (``fbjax.data.language.cut_groups``); returns their per-token
    log-probs aligned token by token, ``[P, L]`` with ``P = N / 2``, one example per pair.

    Pairs never straddle rows when ``train.slots_per_row`` is even (or the layout is padded,
    one sequence per row, where the pair is rows ``2i, 2i + 1``).
    """
    b = stats.token_mask.shape[0]
    k = stats.valid.shape[0] // b
    if k != 1 and k % 2:
        raise ValueError(f"aligned_pairs needs an even train.slots_per_row, got {k}")
    grid, grid_mask = slot_token_grid(stats, stats.token_logps)
    valid = stats.valid[0::2] * stats.valid[1::2]
    arrays = {
        "policy_token_logps_plain": grid[0::2],
        "policy_token_logps_judged": grid[1::2],
        "token_mask": grid_mask[0::2] * grid_mask[1::2] * valid[:, None],
        **{key: v[0::2] for key, v in stats.fields.items()},
    }
    return arrays, valid


def scoped_pairs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """C3PO: every slot with the next slot as its partner (an in-scope group writes its chosen
    and rejected completions in consecutive slots), plus ``scope`` and one indicator per kind
    for the metrics. In-scope rejected slots are partners only (weight 0)."""
    if "scope" not in stats.fields:
        raise ValueError(
            "scoped_pairs needs the slot field 'scope' (fbjax.data.language.c3po_groups)"
        )
    # Zeros when the run has no reference: c3po always asks for it, so the step computes it.
    ref = stats.ref_logps if stats.ref_logps is not None else jnp.zeros_like(stats.logps)
    scope = stats.fields["scope"]
    valid = stats.valid * (scope != language.SCOPE_IN_REJECTED) * (scope > 0)

    def partner(x):
        return jnp.roll(x, -1)

    arrays = {
        "policy_logps": stats.logps,
        "policy_partner_logps": partner(stats.logps),
        "ref_logps": ref,
        "ref_partner_logps": partner(ref),
        "lengths": stats.lengths,
        "scope": scope,
        "in_scope": valid * (scope == SCOPE_IN_CHOSEN),
        "near_scope": valid * (scope == SCOPE_NEAR),
        "out_of_scope": valid * (scope == SCOPE_OUT),
    }
    return arrays, valid


def sami_matrix(num_constitutions: int):
    """SAMI: groups of ``n * n`` slots (``fbjax.data.language.sami_groups``) as the
    ``[G, n, n]`` matrix ``logp_matrix[g, i, j] = log p(y_j | x, c_i)`` (summed), its token
    counts ``lengths`` and ``valid``."""
    n = num_constitutions
    grouped = inputs.listwise(n * n)

    def sami_inputs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
        arrays, weights = grouped(stats)
        square = {
            "logp_matrix": arrays["policy_logps"].reshape(-1, n, n),
            "lengths": arrays["lengths"].reshape(-1, n, n),
            "valid": arrays["valid"].reshape(-1, n, n),
        }
        return square, weights

    sami_inputs.__name__ = f"sami_matrix_{n}"
    return sami_inputs


def signed_tokens(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Token-level rewards: the loss mask holds signed per-token weights
    (``fbjax.data.language.token_reward_groups``); one example per row, weighted by
    ``sum |w|`` so the batch loss is a mean over weighted tokens."""
    arrays = {"policy_token_logps": stats.token_logps, "token_weights": stats.token_mask}
    return arrays, jnp.sum(jnp.abs(stats.token_mask), axis=-1)


def token_distributions(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """ALT: per-token log-probs with the full-vocabulary ``token_kl`` and ``token_entropy`` the
    step computes for objectives with ``reads_distributions``; one example per row, weighted by
    its token count so the batch loss is a mean over all completion tokens."""
    if stats.token_kl is None or stats.token_entropy is None:
        raise ValueError("token_distributions needs the step's token_kl / token_entropy "
                         "(Objective(reads_distributions=True))")
    arrays = {
        "policy_token_logps": stats.token_logps,
        "token_kl": stats.token_kl,
        "token_entropy": stats.token_entropy,
        "token_mask": stats.token_mask,
    }
    return arrays, jnp.sum(stats.token_mask, axis=-1)


# ----------------------------------------------------------------------------- bindings


def chain_of_hindsight(**hparams) -> Objective:
    """Chain of Hindsight: likelihood of the outputs in hindsight-templated sequences, with an
    optional pretraining-data term (groups from ``fbjax.data.language.pretraining_groups``)."""
    return Objective(loss=language.nll_with_pretraining, inputs=sequences_with_kind,
                     hparams=hparams)


def leti(**hparams) -> Objective:
    """LeTI: the LM objective on reward-token + feedback sequences, pretraining data optional."""
    return Objective(loss=language.nll_with_pretraining, inputs=sequences_with_kind,
                     hparams=hparams)


def _likelihood(name: str, doc: str):
    def bind(**hparams) -> Objective:
        return Objective(loss=supervised.nll, inputs=inputs.sequences, hparams=hparams)

    bind.__name__ = bind.__qualname__ = name
    bind.__doc__ = doc
    return bind


conditional_training = _likelihood(
    "conditional_training",
    "Conditional training (Korbak et al. 2023): likelihood after a <|good|>/<|bad|> token.",
)
feedback_conditioned = _likelihood(
    "feedback_conditioned",
    "FCP (and ALT without its KL and entropy terms): likelihood of completions conditioned on "
    "the feedback they received.",
)


def alt(**hparams) -> Objective:
    """ALT: feedback-conditioned likelihood + KL(ref || policy) - entropy, per token."""
    return Objective(loss=language.alt, inputs=token_distributions, hparams=hparams,
                     reads_distributions=True)
ilf = _likelihood("ilf", "ILF: likelihood of the selected refinements given the input.")


def cut(**hparams) -> Objective:
    """CUT on (plain, judgment-conditioned) response pairs."""
    return Objective(loss=language.cut, inputs=aligned_pairs, hparams=hparams)


def c3po(**hparams) -> Objective:
    """C3PO: DPO on in-scope pairs, likelihood of the original outputs near / out of scope."""
    return Objective(
        loss=language.c3po,
        inputs=scoped_pairs,
        hparams=hparams,
        metric_weights={
            "rewards/margin": "in_scope",
            "rewards/accuracy": "in_scope",
            "logps/near_scope": "near_scope",
            "logps/out_of_scope": "out_of_scope",
        },
    )


def sami(num_constitutions: int, **hparams) -> Objective:
    """SAMI with ``num_constitutions`` constitutions (and as many responses) per query."""
    return Objective(loss=language.sami, inputs=sami_matrix(num_constitutions), hparams=hparams)


def token_weighted(**hparams) -> Objective:
    """Token-level rewards from span critiques: likelihood / unlikelihood by the token's sign."""
    return Objective(loss=language.token_weighted, inputs=signed_tokens, hparams=hparams)
