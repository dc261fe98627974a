"""Reward model: Stiennon et al. 2020, "Learning to summarize from human feedback",
arXiv:2009.01325 (the InstructGPT reward model, Ouyang et al. 2022, arXiv:2203.02155, uses the
same loss over all K-choose-2 pairs of a ranking: ``preference.kwise_bradley_terry``).

A reward model ``r(x, y)`` is the SFT transformer with a scalar head on the final token,
trained on human comparisons with the Bradley-Terry loss ``-log sigmoid(r(x, y_w) - r(x, y_l))``
(Eq. 1), then used to score summaries for RL and best-of-N. In fbjax the head is
``ModelConfig.reward_head`` (Hugging Face ``*ForSequenceClassification``, one label) and the loss
``fbjax.train.presets.reward_model``; the K-wise InstructGPT form is
``presets.kwise_reward_model``.

* ``paper``: TL;DR comparisons (the release's ``train`` split, about 92.9k comparisons), one
  epoch, batch 64 comparisons, cosine schedule; the paper's 1.3B / 6.7B GPT-3-style models are
  replaced by GPT-2 XL (1.5B), the supported family of the same architecture. Learning rate
  (here 1.5e-5) and the exact batch are unverified against the paper.
* Expected: reward-model agreement with labellers on validation comparisons of roughly 0.7 for
  the larger models (as recalled; check before quoting).
* ``sim``: the SFT policy plus a fresh head (:func:`experiments.common.reward_model_start`)
  trained on Bradley-Terry preferences between its own samples, judged as Stiennon et al. use
  it, by best-of-4 sampling on held-out prompts (:func:`experiments.common.best_of_n_eval`):
  "reward before -> after" is the SFT policy's oracle reward -> that of the reward model's pick
  of 4 samples; ``rm_accuracy`` is its agreement with the oracle on held-out sample pairs.
* Compute (``paper``): 1,451 steps of 128 padded 640-token rows, forward and backward only:
  about 1e18 FLOPs.

Run::

    fbjax train --experiment experiments/rm_stiennon2020.py --workdir runs/rm_sim
    fbjax train --experiment experiments/rm_stiennon2020.py:paper --workdir runs/rm
"""

from __future__ import annotations

import dataclasses

from experiments import common
from fbjax.data import encode, sources
from fbjax.run import sim, sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

TLDR_TRAIN_COMPARISONS = 92_858


def paper() -> ExperimentConfig:
    return common.paper(
        "rm_stiennon2020", checkpoint="openai-community/gpt2-xl", reward_model=True,
        objective=presets.reward_model(),
        optimizer=OptimizerConfig(learning_rate=1.5e-5, warmup_steps=0, schedule="cosine"),
        train=common.paper_train(examples=TLDR_TRAIN_COMPARISONS, batch=64, completions=2,
                                 seq_len=640, max_prompt_len=512),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(source=sources.TLDRComparisons(split="train"),
                             encoder=encode.paired),
        evaluation=common.PaperEval(
            benchmark="TL;DR comparisons, validation (valid1)",
            metric="reward-model accuracy on held-out comparisons",
            expected="roughly 0.7 for the larger models (unverified)",
        ),
    )


STAGE = common.method(
    name="RM", family="reward model (paired)", feedback="pairwise preference",
    objective=presets.reward_model(), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=dataclasses.replace(common.SIM_OPTIMIZER, learning_rate=3e-4),
    head=sim.reward_model_start, evaluate=sim.best_of_n,
)


get_config = common.variants(paper, STAGE, name="rm_stiennon2020")
