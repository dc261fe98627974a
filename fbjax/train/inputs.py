"""Batch layouts -> the named arrays that losses ask for.

Each function here reads the step's :class:`~fbjax.train.objective.SequenceStats` and returns
``(arrays, weights)``: arrays named as the losses' positional parameters (see
``fbjax/objectives``), and one weight per loss example (0 for padding slots). Which layout an
experiment uses is decided by its data, so an objective is paired with its layout explicitly in
the experiment (``Objective(loss=preference.dpo, inputs=inputs.paired)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fbjax.train.objective import SequenceStats

Array = jax.Array


def _ref(stats: SequenceStats) -> Array:
    # Reference-free objectives never ask for ref_* names, so a zero placeholder is never read.
    return stats.ref_logps if stats.ref_logps is not None else jnp.zeros_like(stats.logps)


def sequences(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """One loss example per completion, weighted by its token count (token-mean SFT)."""
    arrays = {
        "policy_logps": stats.logps,
        "ref_logps": _ref(stats),
        "lengths": stats.lengths,
        **stats.fields,
    }
    return arrays, stats.valid * stats.lengths


def unweighted_sequences(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """One loss example per completion, each counted once (sequence-mean objectives)."""
    arrays, _ = sequences(stats)
    return arrays, stats.valid


def paired(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Pairs from slots ``(2i, 2i + 1)`` = (chosen, rejected)."""
    ref = _ref(stats)
    valid = stats.valid[0::2] * stats.valid[1::2]
    arrays = {
        "policy_chosen_logps": stats.logps[0::2],
        "policy_rejected_logps": stats.logps[1::2],
        "ref_chosen_logps": ref[0::2],
        "ref_rejected_logps": ref[1::2],
        "chosen_lengths": stats.lengths[0::2],
        "rejected_lengths": stats.lengths[1::2],
        **{k: v[0::2] for k, v in stats.fields.items()},
    }
    return arrays, valid


def unpaired(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Thumbs up/down examples, with KTO's mismatched (prompt, completion) slots flagged ``is_kl``.

    Mismatched slots sit in the same batch (static shapes); they are excluded from the loss
    examples and offered as ``kl_policy_logps``/``kl_ref_logps`` with ``kl_valid``.
    """
    is_kl = stats.fields.get("is_kl", jnp.zeros_like(stats.valid))
    valid = stats.valid * (1.0 - is_kl)
    labels = stats.fields.get("labels", jnp.ones_like(stats.valid))
    ref = _ref(stats)
    arrays = {
        "policy_logps": stats.logps,
        "ref_logps": ref,
        "lengths": stats.lengths,
        "kl_policy_logps": stats.logps,
        "kl_ref_logps": ref,
        "kl_valid": stats.valid * is_kl,
        "desirable": valid * labels,
        "undesirable": valid * (1.0 - labels),
        **stats.fields,
        "labels": labels,
        "valid": valid,
    }
    return arrays, valid


def tokens(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Token-level losses (unlikelihood, NFT): one example per row that has scored tokens.

    Such losses return one value per row (their per-row token sum or mean, as the paper
    defines it); every row with scored tokens counts once in the batch average.
    """
    arrays = {
        "policy_token_logps": stats.token_logps,
        "token_mask": stats.token_mask,
        **({"ref_token_logps": stats.ref_token_logps} if stats.ref_token_logps is not None else {}),
    }
    return arrays, (jnp.sum(stats.token_mask, axis=-1) > 0).astype(jnp.float32)


def slot_token_grid(stats: SequenceStats, values: Array) -> tuple[Array, Array]:
    """Per-token ``values [B, L]`` regrouped by completion slot: ``([N, L], mask [N, L])`` where
    entry ``[n, j]`` is the ``j``-th scored token of slot ``n`` (``N = B * K``, slots flattened
    row-major as everywhere else).

    The step hands objectives no slot ids per token, so they are recovered from what it does
    hand over: the packer writes a row's slots left to right, so the scored tokens of slot ``k``
    are the ``lengths[k]`` scored tokens after those of slots ``< k``. This needs 0/1 loss masks
    (``lengths`` are then token counts), which every layout built on it guarantees.
    """
    mask = stats.token_mask
    b, seq = mask.shape
    n = stats.lengths.shape[0]
    k = n // b
    scored = mask > 0
    rank = jnp.cumsum(scored.astype(jnp.int32), axis=1) - 1  # j-th scored token of the row
    counts = jnp.round(stats.lengths).astype(jnp.int32).reshape(b, k)
    ends = jnp.cumsum(counts, axis=1)
    starts = ends - counts
    slot = jnp.sum(rank[:, :, None] >= ends[:, None, :], axis=-1)  # [B, L] in [0, K]
    slot_c = jnp.minimum(slot, k - 1)
    within = rank - jnp.take_along_axis(starts, slot_c, axis=1)
    target = (jnp.arange(b)[:, None] * k + slot_c) * seq + within
    # Unscored positions are sent out of bounds and dropped by the scatter.
    target = jnp.where(scored & (slot < k), target, n * seq).reshape(-1)
    grid = jnp.zeros((n * seq,), values.dtype).at[target].set(values.reshape(-1), mode="drop")
    grid_mask = jnp.zeros((n * seq,), jnp.float32).at[target].set(1.0, mode="drop")
    return grid.reshape(n, seq), grid_mask.reshape(n, seq)


def sequences_with_retain(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """:func:`unweighted_sequences` plus the slot field ``retain`` (0 when absent) and the
    ``retain`` / ``forget`` example masks that weight each kind's metrics (NPO+RT)."""
    arrays, weights = unweighted_sequences(stats)
    retain = stats.fields.get("retain", jnp.zeros_like(stats.valid)) * stats.valid
    arrays.update(retain=retain, forget=stats.valid - retain)
    return arrays, weights


def token_slots_with_likelihood(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Each completion slot's per-token log-probs ``[N, L]`` (:func:`slot_token_grid`) with the
    slot field ``likelihood`` (0 when absent); one example per slot weighted by its scored
    tokens, so a per-slot token mean averages to the batch's token mean."""
    grid, mask = slot_token_grid(stats, stats.token_logps)
    mask = mask * stats.valid[:, None]
    likelihood = stats.fields.get("likelihood", jnp.zeros_like(stats.valid)) * stats.valid
    return {
        "policy_token_logps": grid,
        "token_mask": mask,
        "likelihood": likelihood,
        "desirable": likelihood,
        "undesirable": stats.valid - likelihood,
    }, jnp.sum(mask, axis=-1)


def verified_samples(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """NFT: each completion slot's per-token log-probs under the policy and the rollout policy
    (the step's reference), aligned ``[N, L]``, with slot fields ``labels`` (verifier said
    correct) and ``group_accuracy``; one example per completion.

    The rollout policy's log-probs are per token, so they must be computed in the step
    (reference parameters), not read from a sequence-level reference cache.
    """
    if stats.ref_token_logps is None:
        raise ValueError(
            "NFT needs per-token log-probs of the rollout policy, computed in the step from the "
            "reference parameters; a cached (sequence-level) reference cannot provide them"
        )
    for key in ("labels", "group_accuracy"):
        if key not in stats.fields:
            raise ValueError(f"NFT batches need the slot field {key!r} "
                             f"(have {sorted(stats.fields)})")
    policy, mask = slot_token_grid(stats, stats.token_logps)
    old, _ = slot_token_grid(stats, stats.ref_token_logps)
    labels = stats.fields["labels"]
    return {
        "policy_token_logps": policy,
        "old_token_logps": old,
        "token_mask": mask * stats.valid[:, None],
        "labels": labels,
        "group_accuracy": stats.fields["group_accuracy"],
        "desirable": stats.valid * labels,
        "undesirable": stats.valid * (1.0 - labels),
    }, stats.valid


def _rewards(stats: SequenceStats) -> Array:
    if stats.rewards is None:
        raise ValueError(
            "this objective reads scalar rewards, but the model has no reward head: set "
            "ModelConfig.reward_head=True (fbjax.models.config)"
        )
    return stats.rewards


def reward_pairs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
    """Reward-model pairs: the scalar head's reward of slots ``(2i, 2i + 1)`` = (chosen,
    rejected), plus the chosen slot's fields (e.g. a per-pair ``margins``)."""
    rewards = _rewards(stats)
    valid = stats.valid[0::2] * stats.valid[1::2]
    return {
        "chosen_rewards": rewards[0::2],
        "rejected_rewards": rewards[1::2],
        **{k: v[0::2] for k, v in stats.fields.items()},
    }, valid


reward_pairs.reads_rewards = True


def reward_rankings(group_size: int):
    """Reward-model rankings (InstructGPT's K-wise comparisons): groups of ``group_size``
    consecutive slots, ``rewards [G, K]`` from the scalar head, ``ranks [G, K]`` from the slot
    field ``ranks`` (0 = best) or, without it, the slot order (best first)."""
    grouped = listwise(group_size)

    def ranking_inputs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
        rewards = _rewards(stats)
        arrays, weights = grouped(dataclasses.replace(stats, logps=rewards))
        ranks = arrays.get("ranks")
        if ranks is None:
            ranks = jnp.broadcast_to(jnp.arange(group_size, dtype=jnp.float32),
                                     arrays["valid"].shape)
        return {"rewards": arrays["policy_logps"], "ranks": ranks,
                "valid": arrays["valid"]}, weights

    ranking_inputs.__name__ = f"reward_rankings_{group_size}"
    ranking_inputs.reads_rewards = True
    return ranking_inputs


def listwise(group_size: int):
    """Groups of ``group_size`` consecutive slots (ranked best first) -> ``[G, group_size]``.

    The packer never splits a group across rows; ``train.slots_per_row`` must be a multiple of
    ``group_size`` so that groups start at multiples of it in the flattened slot order.
    """

    def listwise_inputs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
        rows = stats.token_mask.shape[0]
        slots = stats.valid.shape[0] // rows
        if slots == 1 and rows % group_size:
            raise ValueError(
                f"groups of {group_size} completions need train.batch to be a multiple of "
                f"{group_size} in the padded layout, one sequence per row (got {rows} rows)"
            )
        if slots > 1 and slots % group_size:
            raise ValueError(
                f"groups of {group_size} completions need train.slots_per_row to be a multiple "
                f"of {group_size} (got {slots} slots per row)"
            )

        def grid(x):
            return x.reshape(-1, group_size)

        ref = _ref(stats)
        valid = grid(stats.valid)
        arrays = {
            "policy_logps": grid(stats.logps),
            "ref_logps": grid(ref),
            "lengths": grid(stats.lengths),
            "valid": valid,
            **{k: grid(v) for k, v in stats.fields.items()},
        }
        return arrays, valid[:, 0]

    listwise_inputs.__name__ = f"listwise_{group_size}"
    return listwise_inputs


def negative_with_samples(num_samples: int):
    """D2O layout: each group is (human negative, ``num_samples`` self-generated samples)."""
    grouped = listwise(num_samples + 1)

    def d2o_inputs(stats: SequenceStats) -> tuple[dict[str, Array], Array]:
        arrays, weights = grouped(stats)
        return {
            "policy_negative_logps": arrays["policy_logps"][:, 0],
            "ref_negative_logps": arrays["ref_logps"][:, 0],
            "policy_sample_logps": arrays["policy_logps"][:, 1:],
            "ref_sample_logps": arrays["ref_logps"][:, 1:],
            "sample_valid": arrays["valid"][:, 1:],
        }, weights

    d2o_inputs.__name__ = f"negative_with_{num_samples}_samples"
    return d2o_inputs
