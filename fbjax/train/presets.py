"""Ready-made :class:`~fbjax.train.objective.Objective` bindings for the library's losses.

Each function pairs one pure loss with the batch layout it reads and, where the paper defines
one, the batch statistic or running state computed before the loss (KTO's reference point,
BCO's reward shift). Hyperparameters pass straight through to the loss and are validated
against its signature. Experiments import these (``presets.dpo(beta=0.1)``); ``fbjax.train.catalog``
is the one table of all objectives by name.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax

from fbjax.objectives import binary, negative, preference, supervised
from fbjax.train import inputs
from fbjax.train.objective import Objective

def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


_UNPAIRED_METRIC_WEIGHTS = {
    "rewards/chosen": "desirable",
    "logps/chosen": "desirable",
    "rewards/rejected": "undesirable",
    "logps/rejected": "undesirable",
}


def sft(**hparams) -> Objective:
    """Token-mean negative log-likelihood of the completions (templates' masks respected)."""
    return Objective(loss=supervised.nll, inputs=inputs.sequences, hparams=hparams)


def paired(loss):
    def bind(**hparams) -> Objective:
        return Objective(loss=loss, inputs=inputs.paired, hparams=hparams)

    bind.__name__ = loss.__name__
    bind.__doc__ = f"``{loss.__module__}.{loss.__name__}`` on (chosen, rejected) slot pairs."
    return bind


dpo = paired(preference.dpo)
cdpo = paired(preference.cdpo)
rdpo = paired(preference.rdpo)
ipo = paired(preference.ipo)
hinge = paired(preference.hinge)
slic = paired(preference.slic)
simpo = paired(preference.simpo)
orpo = paired(preference.orpo)
cpo = paired(preference.cpo)


def _kto_reference_point(arrays, state, rng, hparams):
    del rng, hparams
    z0 = binary.kto_reference_point(
        arrays["kl_policy_logps"], arrays["kl_ref_logps"], arrays["kl_valid"]
    )
    return {"reference_point": z0}, state


def kto(**hparams) -> Objective:
    """KTO with its reference point from the batch's mismatched (prompt, completion) slots."""
    return Objective(
        loss=binary.kto,
        inputs=inputs.unpaired,
        hparams=hparams,
        prepare=_kto_reference_point,
        metric_weights=_UNPAIRED_METRIC_WEIGHTS,
    )


def bco(**hparams) -> Objective:
    """BCO with the reward shift kept in ``TrainState.objective_state`` (checkpointed).

    The batch's rewards are folded into the running mean first and the updated mean is the
    shift for that batch, matching the golden computed from TRL's running-moments rule
    (``tests/goldens/bco.json``).
    """
    def reward_shift(arrays, state, rng, hparams):
        del rng
        beta = hparams.get("beta", _default(binary.bco, "beta"))
        rewards = jax.lax.stop_gradient(beta * (arrays["policy_logps"] - arrays["ref_logps"]))
        new_state = binary.bco_update_shift(state, rewards, arrays["labels"], arrays["valid"])
        return {"reward_shift": new_state.mean}, new_state

    return Objective(
        loss=binary.bco,
        inputs=inputs.unpaired,
        hparams=hparams,
        prepare=reward_shift,
        init_state=binary.bco_init_shift,
        metric_weights=_UNPAIRED_METRIC_WEIGHTS,
    )


def bco_udm(**hparams) -> Objective:
    """BCO with underlying distribution matching: as :func:`bco`, with undesirable examples
    weighted by the density ratio in each slot's ``udm_weights`` field, which
    :func:`fbjax.train.udm.attach_udm_weights` computes once from the prompts before training."""
    return dataclasses.replace(bco(**hparams), loss=binary.bco_udm)


def pmpo(**hparams) -> Objective:
    """PMPO over thumbs-up/down sequences (positives only, negatives only, or both)."""
    return Objective(
        loss=binary.pmpo, inputs=inputs.unpaired, hparams=hparams,
        metric_weights=_UNPAIRED_METRIC_WEIGHTS,
    )


def npo(**hparams) -> Objective:
    """NPO on negative-only completions."""
    return Objective(loss=negative.npo, inputs=inputs.unweighted_sequences, hparams=hparams)


def unlikelihood(**hparams) -> Objective:
    """Token-level unlikelihood on negative completions."""
    return Objective(loss=negative.unlikelihood, inputs=inputs.tokens, hparams=hparams)


def npo_retain(**hparams) -> Objective:
    """NPO on completions to forget plus the likelihood of retain-set completions (slot field
    ``retain``), the NPO paper's default NPO+RT."""
    return Objective(
        loss=negative.npo_retain, inputs=inputs.sequences_with_retain, hparams=hparams,
        metric_weights={"rewards/rejected": "forget", "logps/rejected": "forget",
                        "logps/retain": "retain"},
    )


def unlikelihood_mle(**hparams) -> Objective:
    """Unlikelihood on negative tokens plus likelihood of training sequences (slot field
    ``likelihood``), per token, as Welleck et al. train it."""
    return Objective(
        loss=negative.unlikelihood_mle, inputs=inputs.token_slots_with_likelihood,
        hparams=hparams,
        metric_weights={"logps/chosen": "desirable", "logps/rejected": "undesirable"},
    )


def d2o(num_samples: int, **hparams) -> Objective:
    """D2O: groups of (human negative, ``num_samples`` self-generated samples)."""
    return Objective(
        loss=negative.d2o, inputs=inputs.negative_with_samples(num_samples), hparams=hparams
    )


def nft(**hparams) -> Objective:
    """NFT over verifier-labelled samples (slot fields ``labels``, ``group_accuracy``).

    The loss's ratios are to the policy that sampled the data; in a run on fixed samples from
    the starting policy that is the step's reference, computed per token in the step.
    """
    return Objective(
        loss=negative.nft, inputs=inputs.verified_samples, hparams=hparams, reads_reference=True,
        metric_weights={"logps/chosen": "desirable", "logps/rejected": "undesirable"},
    )


def reward_model(**hparams) -> Objective:
    """Bradley-Terry reward model on (chosen, rejected) pairs, scored by the scalar head
    (``ModelConfig.reward_head``). With a per-pair ``margins`` slot field, use
    :func:`reward_model_margin`."""
    return Objective(loss=preference.bradley_terry, inputs=inputs.reward_pairs, hparams=hparams)


def reward_model_margin(**hparams) -> Objective:
    """Bradley-Terry reward model with each pair's margin read from the ``margins`` field."""
    return Objective(loss=preference.bradley_terry_margin, inputs=inputs.reward_pairs,
                     hparams=hparams)


def plackett_luce(size: int, **hparams) -> Objective:
    """Plackett-Luce DPO over groups of ``size`` completions ranked best first."""
    return Objective(loss=preference.plackett_luce, inputs=inputs.listwise(size), hparams=hparams)


def irpo(size: int, **hparams) -> Objective:
    """IRPO over groups of ``size`` items with graded relevance (slot field ``relevance``)."""
    return Objective(loss=preference.irpo, inputs=inputs.listwise(size), hparams=hparams)


def kwise_reward_model(group_size: int, **hparams) -> Objective:
    """InstructGPT's reward model: all pairs of each prompt's ``group_size`` ranked completions
    (slot field ``ranks``, 0 = best, or best-first slot order) as one example."""
    return Objective(loss=preference.kwise_bradley_terry,
                     inputs=inputs.reward_rankings(group_size), hparams=hparams)
