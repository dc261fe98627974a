"""DRIFT: Wang et al. 2025, "DRIFT: Learning from Abundant User Dissatisfaction in Real-World
Preference Learning", arXiv:2510.02341.

DRIFT anchors iterative DPO on real user dissatisfaction: the assistant turn a user was unhappy
with is the rejected response, and the chosen one is sampled from the *current* policy (given
the dissatisfied turn and the user's feedback), regenerated every iteration. The loss is DPO
(plus a tiny NLL term, ``rpo_alpha = 0.001``, which fbjax's DPO preset does not include).

* ``paper``: one DRIFT iteration on WildFeedback dissatisfaction (DSAT) turns from
  ``Qwen/Qwen2.5-7B-Instruct``, beta = 0.1, learning rate 5e-7, linear schedule with 10%
  warmup, batch 4 per device, one epoch, 2048-token sequences with 1024-token prompts (the
  release's configs; the paper optimises with RMSprop, fbjax with AdamW). fbjax has no
  WildFeedback reader and the chosen responses are sampled online, so data and encoder are
  placeholders; the DSAT count (5k) only sizes the schedule and is unverified.
* Expected: higher WildBench task scores and AlpacaEval 2 LC win rates than iterative DPO and
  SPIN (no number recorded here).
* ``sim``: one round: the SFT policy's worst sample on a prompt (reward < 1) as the dissatisfied
  response, its best sample on that prompt as the chosen one (the tiny policy cannot read
  feedback, so its best sample stands in for the feedback-conditioned regeneration).
* Compute (``paper``): 1,250 steps of 8 padded 2048-token rows, policy plus reference.

Run::

    fbjax train --experiment experiments/drift_wang2025.py --workdir runs/drift_sim
"""

from __future__ import annotations

from experiments import common
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

WILDFEEDBACK_DSAT = 5_000


def paper() -> ExperimentConfig:
    train = common.paper_train(examples=WILDFEEDBACK_DSAT, batch=4, completions=2, seq_len=2048,
                               max_prompt_len=1024)
    return common.paper(
        "drift_wang2025", checkpoint="Qwen/Qwen2.5-7B-Instruct",
        objective=presets.dpo(beta=0.1),
        optimizer=OptimizerConfig(learning_rate=5e-7, warmup_steps=round(0.1 * train.steps),
                                  schedule="linear"),
        train=train,
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(
            source=sources.Unavailable(name="WildFeedback DSAT turns",
                                       reason="no fbjax reader for WildFeedback"),
            encoder=common.OnlineEncoder("chosen responses sampled from the current policy "
                                         "after the dissatisfied turn and the user's feedback"),
            template=sources.Chat(common.CHATML)),
        evaluation=common.PaperEval(benchmark="WildBench, AlpacaEval 2",
                                    metric="task score; length-controlled win rate"),
    )


STAGE = common.method(
    name="DRIFT", family="negative-anchored preference", feedback="dissatisfied samples",
    objective=presets.dpo(beta=0.1), build=sim_feedback.dissatisfaction_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="drift_wang2025")
