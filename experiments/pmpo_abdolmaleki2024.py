"""PMPO: Abdolmaleki et al. 2024, "Preference Optimization as Probabilistic Inference" (v3:
"Learning from negative feedback, or positive feedback or both"), arXiv:2410.04166.

Preference-based MPO maximises the likelihood of accepted samples and minimises that of
rejected ones, anchored by ``beta KL(pi_ref || pi_theta)``:
``alpha E_accepted[logp] - (1 - alpha) E_rejected[logp] - beta KL`` (the paper's final objective);
it works with positives only (alpha = 1), negatives only (alpha = 0) or both, unpaired.

* ``paper``: the paper's language-model setup (Gemma-based RLHF, per its acknowledgements) and
  its alpha / beta are unverified, and there is no official code. The variant is a stand-in:
  Gemma-7B (the supported Gemma generation) on UltraFeedback thumbs, alpha = 0.5, beta = 0.1,
  learning rate 5e-7, batch 128, one epoch, 2048-token sequences. UltraFeedback's thumbs
  (thumbs-up iff score >= 4) are not balanced, so ``sim_feedback.pmpo_class_means`` (``adapt``) sets
  alpha and beta from the loaded data's class mix, making the batch mean the paper's per-class
  objective, as in the ``sim`` variant.
* Expected: no number recorded.
* ``sim``: thumbs up iff the oracle reward is 1, alpha = 0.5, beta = 0.1 in the paper's
  objective, whose expectations are per class; ``sim_feedback.pmpo_class_means`` rescales alpha and
  beta to the data's class mix (one third accepted) so the batch mean is that objective. With
  the batch mean over the raw mix the rejected samples weighed twice the accepted ones and the
  oracle reward fell from 0.46 to 0.40; with per-class means it rises to 0.50 (seed 0).
* Compute (``paper``): 1,875 steps of 128 padded 2048-token rows, policy plus reference.

Run::

    fbjax train --experiment experiments/pmpo_abdolmaleki2024.py --workdir runs/pmpo_sim
"""

from __future__ import annotations

import dataclasses

from experiments import bco_jung2024, common
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.data.chat import GEMMA
from fbjax.train import presets

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT


def paper():
    base = bco_jung2024.paper()
    return common.derive(
        base,
        name="pmpo_abdolmaleki2024",
        checkpoint="google/gemma-7b",
        objective=presets.pmpo(alpha=0.5, beta=0.1),
        adapt=sim_feedback.pmpo_class_means,
        # The UltraFeedback thumbs of the BCO configuration, in Gemma's own turn format.
        data=dataclasses.replace(base.stages[0].data, template=sources.Chat(GEMMA)),
        evaluation=common.PaperEval(benchmark="unverified", metric="unverified"),
    )


STAGE = common.method(
    name="PMPO", family="unpaired binary", feedback="thumbs up/down",
    objective=presets.pmpo(alpha=0.5, beta=0.1), build=sim_feedback.thumbs_without_kl,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER, adapt=sim_feedback.pmpo_class_means,
)


get_config = common.variants(paper, STAGE, name="pmpo_abdolmaleki2024")
