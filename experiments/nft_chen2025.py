"""NFT: Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
Reasoning", arXiv:2505.18116.

Negative-aware Fine-Tuning learns from verifier-checked samples with a supervised objective:
likelihood of the correct answers (as a ratio to the rollout policy) and, for the wrong ones,
likelihood under an implicit negative policy ``(pi_old - r_q pi_theta) / (1 - r_q)`` built from
the question's accuracy ``r_q`` (``fbjax.objectives.negative.nft``).

* ``paper``: Qwen2.5-Math-7B on DAPO-Math-17k: 16 responses per prompt, 512 prompts per rollout
  batch in updates of 32 prompts (512 sequences), learning rate 1e-6 with 10 warmup steps,
  negative weight 1, negative clip 1, normalisation 1 (``train_7B.sh``), up to 512 prompt and
  3,584 response tokens. The rollouts are an online stage
  (:class:`~fbjax.run.config.OnlineStage`): per round 512 prompts x 16 responses from the
  current policy, verified, 16 updates of 32 prompts with the round's start as the rollout
  policy (``per_round_reference``); 34 rounds are one pass over DAPO-Math-17k (the paper's
  number of passes is unverified). The paper's verifier is a rule-based math checker
  (``paper_provider``); exact match of the last ``\\boxed{}`` with the record's
  ``meta["answer"]`` stands in (``online_records.boxed_answer_correct``, stricter: equivalent
  forms count as wrong). fbjax has no DAPO-Math reader (:class:`~fbjax.data.sources.Unavailable`:
  the run fails naming it). The
  reference sums the token losses of an update's 512 sequences and divides by 1000; fbjax's step
  averages over sequences, so ``token_normalizer = 1000 / 512`` gives the same gradient scale.
* Expected (Table 1, as recalled): NFT on par with DAPO / GRPO on AIME24, AIME25, AMC23 and
  MATH500; no number recorded here.
* ``sim``: each prompt's 4 samples, labelled correct iff the oracle reward is 1, groups that are
  all right or all wrong dropped (as the reference's group filter does). The SFT start is both the
  rollout policy and the step's reference, so the ratios are to the policy that sampled; the
  token losses are summed per sequence (``token_normalizer = 1``), sized for 16-row batches.
* Compute (``paper``): per rollout batch, sampling 8,192 responses of up to 3,584 tokens from a
  7B model and 16 updates of 512 sequences: the paper's 4 x 8 H100s.

Run::

    fbjax train --experiment experiments/nft_chen2025.py --workdir runs/nft_sim
"""

from __future__ import annotations

import math

from experiments import common
from fbjax import sampling
from fbjax.data import sources
from fbjax.feedback import ScoreFunction, Thumbs
from fbjax.run import online, online_records, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

RESPONSES_PER_PROMPT = 16
DAPO_MATH_PROMPTS = 17_398
UPDATE_SEQUENCES = 512


ROLLOUT_PROMPTS = 512
UPDATE_PROMPTS = 32


def paper() -> ExperimentConfig:
    stage = OnlineStage(
        name="train",
        data=sources.Dataset(
            source=sources.Unavailable(name="BytedTsinghua-SIA/DAPO-Math-17k",
                                       reason="no fbjax reader for DAPO-Math-17k"),
            template=sources.Chat(common.CHATML)),
        prompts=online.DatasetPrompts(num_prompts=ROLLOUT_PROMPTS),
        provider=Thumbs(ScoreFunction(online_records.boxed_answer_correct), threshold=1.0,
                        source="boxed-answer exact match"),
        paper_provider="rule-based math answer verifier against DAPO-Math's reference answers",
        encode=online_records.nft_online_groups,
        objective=presets.nft(negative_weight=1.0, negative_clip=1.0, normalize=1,
                              token_normalizer=1000.0 / UPDATE_SEQUENCES),
        rounds=math.ceil(DAPO_MATH_PROMPTS / ROLLOUT_PROMPTS),
        samples_per_prompt=RESPONSES_PER_PROMPT,
        per_round_reference=True,
        sampling=sampling.SamplingConfig(max_new_tokens=3584, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, schedule="constant"),
        train=common.paper_train(examples=ROLLOUT_PROMPTS, batch=UPDATE_PROMPTS,
                                 completions=RESPONSES_PER_PROMPT, seq_len=4096,
                                 max_prompt_len=512, microbatches=16),
        family="negative-aware (verifier)", feedback="correct / wrong per sample",
    )
    return common.online_paper(
        "nft_chen2025", checkpoint="Qwen/Qwen2.5-Math-7B", stages=(stage,),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="AIME24, AIME25, AMC23 (avg@32); MATH500, Minerva, "
                                    "OlympiadBench", metric="accuracy"),
    )


STAGE = common.method(
    name="NFT", family="negative-aware (verifier)", feedback="correct / wrong per sample",
    objective=presets.nft(token_normalizer=1.0), build=sim_feedback.verified_groups,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="nft_chen2025")
