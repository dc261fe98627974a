"""SLiC-HF: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
arXiv:2305.10425.

SLiC calibrates sequence likelihoods with a hinge on the policy's own log-probabilities plus a
regulariser: ``max(0, delta - logp(y_w) + logp(y_l)) + lambda NLL(y_w)`` (reference-free; the
paper's regulariser is the NLL of the SFT target, HALOs' that of ``y_w``, used here).

* ``paper``: Reddit TL;DR summarisation from the human comparisons of Stiennon et al. (fbjax's
  TL;DR comparisons reader), delta = 1, lambda = 0.1, batch 512, learning rate 1e-4 (TRL's
  paper index; the paper tunes T5 models with Adafactor). T5 is an encoder-decoder, not a family
  fbjax supports: GPT-2 XL stands in.
* Expected: SLiC-HF summaries preferred over the SFT model's and on par with RLHF-PPO in human
  evaluation (no number recorded here).
* Compute (``paper``): 182 steps of 1,024 padded 640-token rows, policy only;
  ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/slic_zhao2023.py --workdir runs/slic_sim
    fbjax train --experiment experiments/slic_zhao2023.py:paper --workdir runs/slic
"""

from __future__ import annotations

from experiments import common, rm_stiennon2020
from fbjax.data import encode, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT


def paper() -> ExperimentConfig:
    return common.paper(
        "slic_zhao2023", checkpoint="openai-community/gpt2-xl",
        objective=presets.slic(delta=1.0, regularization=0.1),
        optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0, schedule="constant"),
        train=common.paper_train(examples=rm_stiennon2020.TLDR_TRAIN_COMPARISONS, batch=512,
                                 completions=2, seq_len=640, max_prompt_len=512,
                                 microbatches=8),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(source=sources.TLDRComparisons(split="train"),
                             encoder=encode.paired),
        evaluation=common.PaperEval(benchmark="Reddit TL;DR", metric="human side-by-side "
                                    "preference against the SFT and RLHF summaries"),
    )


STAGE = common.method(
    name="SLiC", family="paired preference", feedback="pairwise preference",
    objective=presets.slic(delta=1.0, regularization=0.1), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="slic_zhao2023")
