"""DRIFT: Wang et al. 2025, "DRIFT: Learning from Abundant User Dissatisfaction in Real-World
Preference Learning", arXiv:2510.02341.

DRIFT anchors iterative DPO on real user dissatisfaction: the assistant turn a user was unhappy
with is the rejected response, and the chosen one is sampled from the *current* policy (given
the dissatisfied turn and the user's feedback), regenerated every iteration. The loss is DPO
(plus a tiny NLL term, ``rpo_alpha = 0.001``, which fbjax's DPO preset does not include).

* ``paper``: from ``Qwen/Qwen2.5-7B-Instruct``, the seed stage (DPO, 3 epochs on the 491
  DSAT -> SAT seed pairs), then the two DRIFT iterations as one online stage of 2 rounds
  (:class:`~fbjax.run.config.OnlineStage`): per round, one chosen response per WildFeedback
  dissatisfaction (DSAT) turn sampled from the current policy after the dissatisfying turn and
  the user's feedback (``online_records.drift_context``; T 0.7, top-p 0.9, 512 new tokens),
  paired against that turn on the original prompt, one epoch of DPO with the round's start as
  reference. The feedback is the users' own (``paper_provider``): no stand-in needed. beta =
  0.1, learning rate 5e-7, linear schedule with 10% warmup, batch 4 per device, 2048-token
  sequences with 1024-token prompts (the release's configs; the paper optimises with RMSprop,
  fbjax with AdamW; ``rpo_alpha = 0.001`` is not in fbjax's DPO preset). fbjax has no
  WildFeedback reader (:class:`~fbjax.data.sources.Unavailable`: the run fails naming it); its
  records would be ``FeedbackExample(prompt, completion=DSAT turn, feedback=user's
  feedback)``. The DSAT count (5k) only sizes the schedule and is unverified.
* Expected: higher WildBench task scores and AlpacaEval 2 LC win rates than iterative DPO and
  SPIN (no number recorded here).
* ``sim``: one round: the SFT policy's worst sample on a prompt (reward < 1) as the dissatisfied
  response, its best sample on that prompt as the chosen one (the tiny policy cannot read
  feedback, so its best sample stands in for the feedback-conditioned regeneration).
* Compute (``paper``): the seed stage's 369 steps, then per round one response per DSAT turn
  (up to 512 tokens) and 1,250 steps of 8 padded 2048-token rows, policy plus reference.

Run::

    fbjax train --experiment experiments/drift_wang2025.py --workdir runs/drift_sim
"""

from __future__ import annotations

import dataclasses

from experiments import common
from fbjax import sampling
from fbjax.data import encode, sources
from fbjax.run import online, online_records, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage, TrainStage
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

WILDFEEDBACK_DSAT = 5_000


SEED_PAIRS = 491
ITERATIONS = 2


def paper() -> ExperimentConfig:
    train = common.paper_train(examples=WILDFEEDBACK_DSAT, batch=4, completions=2, seq_len=2048,
                               max_prompt_len=1024)
    optimizer = OptimizerConfig(learning_rate=5e-7, warmup_steps=round(0.1 * train.steps),
                                schedule="linear")
    seed_train = common.paper_train(examples=SEED_PAIRS, batch=4, completions=2, seq_len=2048,
                                    max_prompt_len=1024, epochs=3)
    seed = TrainStage(
        name="seed", objective=presets.dpo(beta=0.1),
        data=sources.Dataset(
            source=sources.Unavailable(name="WildFeedback DSAT -> SAT seed pairs",
                                       reason="no fbjax reader for WildFeedback"),
            encoder=encode.paired, template=sources.Chat(common.CHATML)),
        optimizer=dataclasses.replace(optimizer,
                                      warmup_steps=round(0.1 * seed_train.steps)),
        train=seed_train)
    drift = OnlineStage(
        name="train", start="seed", per_round_reference=True,
        data=sources.Dataset(
            source=sources.Unavailable(name="WildFeedback DSAT turns",
                                       reason="no fbjax reader for WildFeedback"),
            template=sources.Chat(common.CHATML)),
        prompts=online.DatasetPrompts(render=online_records.drift_context),
        provider=online_records.OVER_NEGATIVE,
        paper_provider="none asked: real users' dissatisfaction (WildFeedback DSAT turns and "
                       "their feedback) is the negative; the current policy writes the positive",
        encode=encode.paired,
        objective=presets.dpo(beta=0.1),
        rounds=ITERATIONS,
        samples_per_prompt=1,
        sampling=sampling.SamplingConfig(max_new_tokens=512, temperature=0.7, top_p=0.9),
        optimizer=optimizer,
        train=train,
        family="negative-anchored preference", feedback="dissatisfied turns",
    )
    return common.online_paper(
        "drift_wang2025", checkpoint="Qwen/Qwen2.5-7B-Instruct", stages=(seed, drift),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="WildBench, AlpacaEval 2",
                                    metric="task score; length-controlled win rate"),
    )


STAGE = common.method(
    name="DRIFT", family="negative-anchored preference", feedback="dissatisfied samples",
    objective=presets.dpo(beta=0.1), build=sim_feedback.dissatisfaction_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="drift_wang2025")
