"""ORPO: Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
Model", arXiv:2403.07691.

ORPO adds an odds-ratio penalty to supervised fine-tuning, so one stage from the *base* model
does both: ``NLL(y_w) - lambda log sigmoid(log odds(y_w) - log odds(y_l))`` with odds from the
per-token average log-probabilities (Eq. 6-7).

* ``paper``: Mistral-ORPO-beta: ``mistralai/Mistral-7B-v0.1`` (no SFT stage), UltraFeedback
  pairs (the paper used ``argilla/ultrafeedback-binarized-preferences-cleaned``, about 60.9k
  pairs with TruthfulQA prompts removed; fbjax reads the original release, best vs worst),
  lambda = 0.1, learning rate 5e-6, 200 warmup steps, 5 epochs, batch 32 (8 per device on
  4 A100s), 2048-token sequences with up to 1792 prompt tokens. The paper decays with
  ``inverse_sqrt``, which fbjax's schedules lack: linear decay here. fbjax's ORPO takes the NLL
  over the completion only; the official code also trains on the prompt tokens.
* Expected (Sec. 6.1, Mistral-ORPO-beta): AlpacaEval 2.0 win rate about 12.2%, MT-Bench about
  7.32 (as recalled; check before quoting).
* Compute (``paper``): 9,519 steps of 64 padded 2048-token rows, policy only: about 5.5e19
  FLOPs; ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/orpo_hong2024.py --workdir runs/orpo_sim
    fbjax train --experiment experiments/orpo_hong2024.py:paper --workdir runs/orpo
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

ARGILLA_CLEANED_PAIRS = 60_917


def paper() -> ExperimentConfig:
    return common.paper(
        "orpo_hong2024", checkpoint="mistralai/Mistral-7B-v0.1",
        objective=presets.orpo(beta=0.1),
        optimizer=OptimizerConfig(learning_rate=5e-6, warmup_steps=200, schedule="linear"),
        train=common.paper_train(examples=ARGILLA_CLEANED_PAIRS, batch=32, completions=2,
                                 seq_len=2048, max_prompt_len=1792, epochs=5, microbatches=4),
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(source=sources.UltraFeedback(view="paired"), encoder=encode.paired,
                             template=sources.Chat(common.ZEPHYR)),
        evaluation=common.PaperEval(
            benchmark="AlpacaEval 2.0, MT-Bench", metric="win rate vs GPT-4 Turbo; MT-Bench score",
            expected="about 12.2% and 7.32 (Mistral-ORPO-beta)",
        ),
    )


STAGE = common.method(
    name="ORPO", family="paired preference", feedback="pairwise preference",
    objective=presets.orpo(beta=0.1), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="orpo_hong2024")
