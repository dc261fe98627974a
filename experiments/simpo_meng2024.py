"""SimPO: Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
Reward", arXiv:2405.14734.

SimPO drops the reference model and uses the length-normalised log-likelihood as the implicit
reward, with a target margin gamma: ``-log sigmoid(beta (avg_logp(y_w) - avg_logp(y_l)) - gamma)``
(Eq. 6).

* ``paper``: the Mistral-Base setting of the main results table (Table 1): the SFT model
  ``alignment-handbook/zephyr-7b-sft-full`` trained on UltraFeedback pairs (61,135 pairs in the
  ``HuggingFaceH4/ultrafeedback_binarized`` release; fbjax's UltraFeedback reader binarises
  best vs worst fine-grained score, the H4 release best vs a random other completion), zephyr
  chat template, beta = 2.0, gamma/beta = 0.8 (gamma = 1.6), learning rate 3e-7, cosine
  schedule with 10% warmup, batch 128 pairs, one epoch, 1024-token sequences (official
  ``training_configs``).
* Expected (Table 1, Mistral-Base): AlpacaEval 2 length-controlled win rate about 21.5%
  (raw 20.8%), Arena-Hard about 16.6 (numbers as recalled from the paper; check before
  quoting).
* Compute (``paper``): 478 steps of 256 padded 1024-token rows, policy only (no reference):
  about 5e18 FLOPs, the paper's 4 x H100 for a few hours; ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/simpo_meng2024.py --workdir runs/simpo_sim
    fbjax train --experiment experiments/simpo_meng2024.py:paper --workdir runs/simpo
"""

from __future__ import annotations

from experiments import common
from fbjax.data import encode, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

ULTRAFEEDBACK_PAIRS = 61_135


def paper() -> ExperimentConfig:
    train = common.paper_train(examples=ULTRAFEEDBACK_PAIRS, batch=128, completions=2,
                               seq_len=1024, max_prompt_len=512, microbatches=8)
    return common.paper(
        "simpo_meng2024", checkpoint="alignment-handbook/zephyr-7b-sft-full",
        objective=presets.simpo(beta=2.0, gamma=1.6),
        optimizer=OptimizerConfig(learning_rate=3e-7, warmup_steps=round(0.1 * train.steps),
                                  schedule="cosine"),
        train=train,
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(source=sources.UltraFeedback(view="paired"), encoder=encode.paired,
                             template=sources.Chat(common.ZEPHYR)),
        evaluation=common.PaperEval(
            benchmark="AlpacaEval 2, Arena-Hard, MT-Bench",
            metric="length-controlled win rate vs GPT-4 Turbo (AlpacaEval 2)",
            expected="LC 21.5%, WR 20.8%, Arena-Hard 16.6 (Table 1, Mistral-Base)",
        ),
    )


STAGE = common.method(
    name="SimPO", family="paired preference", feedback="pairwise preference",
    objective=presets.simpo(beta=2.0, gamma=1.6), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="simpo_meng2024")
