"""Plackett-Luce DPO: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
is Secretly a Reward Model", arXiv:2305.18290, Appendix A.3.

With K ranked completions and implicit rewards ``s_k = beta rho(y_tau(k))``, the Plackett-Luce
model gives ``-sum_k [s_k - log sum_{j >= k} exp(s_j)]``; K = 2 is DPO.

* ``paper``: the appendix derives the objective but runs no experiment with it. The variant
  applies the DPO paper's recipe (beta = 0.1, learning rate 1e-6, 150 warmup steps, batch 64,
  GPT-2 XL in place of Pythia-2.8B as in :mod:`experiments.dpo_rafailov2023`) to OASST1's ranked
  English replies, the ranked data fbjax reads, in lists of :data:`LIST_SIZE` (longer lists keep
  their best replies; Plackett-Luce rankings of a subset follow the same model). The number of
  English prompts with three or more ranked replies (about 8k) is an estimate. No expected number.
* ``sim``: each prompt's 4 samples ranked by oracle reward.
* Compute (``paper``): 125 steps of 192 padded 512-token rows; ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/plackett_luce_rafailov2023.py --workdir runs/pl_sim
    fbjax train --experiment experiments/plackett_luce_rafailov2023.py:paper --workdir runs/pl
"""

from __future__ import annotations

import functools

from experiments import common, dpo_rafailov2023
from fbjax.data import listwise, sources
from fbjax.run import sim_feedback
from fbjax.train import presets

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

LIST_SIZE = 3
OASST1_EN_LISTS = 8_000



def paper():
    return common.derive(
        dpo_rafailov2023.paper(),
        name="plackett_luce_rafailov2023",
        objective=presets.plackett_luce(LIST_SIZE, beta=0.1),
        train=common.paper_train(examples=OASST1_EN_LISTS, batch=64, completions=LIST_SIZE,
                                 seq_len=512, max_prompt_len=256),
        data=sources.Dataset(source=sources.OASST1(languages="en"),
                             encoder=functools.partial(listwise.ranked_groups, size=LIST_SIZE),
                             template=sources.Transcript()),
        evaluation=common.PaperEval(benchmark="OASST1 (no experiment in the paper)",
                                    metric="GPT-4 win rate against the best-ranked reply"),
    )


STAGE = common.method(
    name="PL-DPO", family="ranked lists", feedback="ranking of 4 samples",
    objective=presets.plackett_luce(common.SAMPLES_PER_PROMPT, beta=0.1),
    build=sim_feedback.ranked_lists, train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="plackett_luce_rafailov2023")
