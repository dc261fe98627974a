"""cDPO: Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"
(a technical note, ericmitchell.ai/cdpo.pdf; no arXiv id).

Conservative DPO treats each preference label as correct with probability ``1 - eps`` and trains
on the soft label: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` (the note's
Eq. 3; ``label_smoothing`` in the DPO code). Unlike rDPO it does not debias the loss, so the
optimal margin stays finite.

* ``paper``: the note has no experiments. The variant is cDPO as the rDPO paper runs it, as the
  baseline of :mod:`experiments.rdpo_chowdhury2024` (same data, model and schedule, the same
  epsilon = 0.1). No expected number.
* ``sim``: the same noisy simulated preferences as the rDPO ``sim`` variant, epsilon = the flip
  rate.
* Compute: as :mod:`experiments.rdpo_chowdhury2024`.

Run::

    fbjax train --experiment experiments/cdpo_mitchell2023.py --workdir runs/cdpo_sim
    fbjax train --experiment experiments/cdpo_mitchell2023.py:paper --workdir runs/cdpo
"""

from __future__ import annotations

from experiments import common, rdpo_chowdhury2024
from fbjax.train import presets

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT


def paper():
    return common.derive(
        rdpo_chowdhury2024.paper(),
        name="cdpo_mitchell2023",
        objective=presets.cdpo(beta=0.1, label_smoothing=0.1),
    )


STAGE = common.method(
    name="cDPO", family="paired preference", feedback="noisy pairwise preference",
    objective=presets.cdpo(beta=0.1, label_smoothing=rdpo_chowdhury2024.FLIP_RATE),
    build=rdpo_chowdhury2024.noisy_preferences,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="cdpo_mitchell2023")
