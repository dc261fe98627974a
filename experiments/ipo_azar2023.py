"""IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", arXiv:2310.12036.

IPO regresses the preference margin onto a fixed target instead of pushing it to infinity:
``(h - 1/(2 tau))^2`` (Eq. 17), here with TRL's per-token averaged log-ratios in ``h`` (the form
the IPO authors confirmed; ``length_normalize=False`` gives the paper's sums) and tau = 0.1.

* ``paper``: the paper's experiments are small bandit illustrations (action probabilities over
  training, Sec. 5), not language models. The variant runs IPO on the DPO paper's Anthropic HH
  setup (:mod:`experiments.dpo_rafailov2023`), as TRL and HALOs do; no expected number.
* ``sim``: IPO on the simulator's pairwise preferences.
* Compute: as :mod:`experiments.dpo_rafailov2023`.

Run::

    fbjax train --experiment experiments/ipo_azar2023.py --workdir runs/ipo_sim
    fbjax train --experiment experiments/ipo_azar2023.py:paper --workdir runs/ipo
"""

from __future__ import annotations

from experiments import common, dpo_rafailov2023
from fbjax.run import sim_feedback
from fbjax.train import presets

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT


def paper():
    return common.derive(
        dpo_rafailov2023.paper(),
        name="ipo_azar2023",
        objective=presets.ipo(beta=0.1, length_normalize=True),
        evaluation=common.PaperEval(
            benchmark="Anthropic HH test (the paper itself has no LLM experiment)",
            metric="GPT-4 win rate against the preferred response",
        ),
    )


STAGE = common.method(
    name="IPO", family="paired preference", feedback="pairwise preference",
    objective=presets.ipo(beta=0.1), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="ipo_azar2023")
