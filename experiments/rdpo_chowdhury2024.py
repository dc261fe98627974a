"""rDPO: Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO: Aligning Language Models with
Noisy Feedback", arXiv:2403.00409.

rDPO debiases the DPO loss for preference labels flipped with a known rate epsilon < 1/2
(Eq. 5): ``[(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps)`` with ``l(h) = -log sigmoid(beta h)``.
The paper compares it with DPO and cDPO on Anthropic HH (GPT-4 win rate against the preferred
response) and on IMDb sentiment generation with injected label noise (reward vs KL).

* ``paper``: the HH experiment as TRL's paper index records the hyperparameters (batch 16,
  learning rate 1e-3, beta 0.1, epsilon 0.1, 512-token sequences; the learning rate reads as a
  LoRA-style value and is unverified against the paper), on the DPO paper's HH setup
  (:mod:`experiments.dpo_rafailov2023`, GPT-2 XL standing in for the unsupported Pythia family).
  The model the rDPO paper used for HH is unverified here.
* Expected: rDPO's win rate above DPO's and cDPO's on noisy preferences, the gap growing with
  the noise rate; no number recorded here.
* ``sim``: preferences whose labels the simulated annotator flips with probability
  :data:`FLIP_RATE`, and rDPO told that rate.
* Compute (``paper``): 10,050 steps of 32 padded 512-token rows, about 2e18 FLOPs for
  GPT-2 XL (policy plus reference); ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/rdpo_chowdhury2024.py --workdir runs/rdpo_sim
    fbjax train --experiment experiments/rdpo_chowdhury2024.py:paper --workdir runs/rdpo
"""

from __future__ import annotations

import dataclasses
import functools

from experiments import common, dpo_rafailov2023
from fbjax.run import sim_feedback
from fbjax.train import presets

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

# Label-flip rate of the simulated annotator in the ``sim`` variant (and the rate rDPO and cDPO
# are told). The paper's recommended epsilon for real data is 0.1.
FLIP_RATE = 0.2
noisy_preferences = functools.partial(sim_feedback.preference_pairs, flip_rate=FLIP_RATE)


def paper():
    base = dpo_rafailov2023.paper()
    return common.derive(
        base,
        name="rdpo_chowdhury2024",
        objective=presets.rdpo(beta=0.1, label_smoothing=0.1),
        optimizer=dataclasses.replace(base.stages[0].optimizer, learning_rate=1e-3),
        train=common.paper_train(examples=dpo_rafailov2023.HH_TRAIN_PAIRS, batch=16,
                                 completions=2, seq_len=512, max_prompt_len=256),
        evaluation=common.PaperEval(
            benchmark="Anthropic HH test", metric="GPT-4 win rate against the preferred response",
            expected="rDPO above DPO and cDPO (no number recorded here)",
        ),
    )


STAGE = common.method(
    name="rDPO", family="paired preference", feedback="noisy pairwise preference",
    objective=presets.rdpo(beta=0.1, label_smoothing=FLIP_RATE), build=noisy_preferences,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="rdpo_chowdhury2024")
