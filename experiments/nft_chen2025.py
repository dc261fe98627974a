"""NFT: Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
Reasoning", arXiv:2505.18116.

Negative-aware Fine-Tuning learns from verifier-checked samples with a supervised objective:
likelihood of the correct answers (as a ratio to the rollout policy) and, for the wrong ones,
likelihood under an implicit negative policy ``(pi_old - r_q pi_theta) / (1 - r_q)`` built from
the question's accuracy ``r_q`` (``fbjax.objectives.negative.nft``).

* ``paper``: Qwen2.5-Math-7B on DAPO-Math-17k: 16 responses per prompt, 512 prompts per rollout
  batch in updates of 32 prompts (512 sequences), learning rate 1e-6 with 10 warmup steps,
  negative weight 1, negative clip 1, normalisation 1 (``train_7B.sh``), up to 512 prompt and
  3,584 response tokens. fbjax has no DAPO-Math reader and no rollout stage
  (:class:`~fbjax.data.sources.Unavailable`, :class:`~experiments.common.OnlineEncoder`). The
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

from experiments import common
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

RESPONSES_PER_PROMPT = 16
DAPO_MATH_PROMPTS = 17_398
UPDATE_SEQUENCES = 512


def paper() -> ExperimentConfig:
    return common.paper(
        "nft_chen2025", checkpoint="Qwen/Qwen2.5-Math-7B",
        objective=presets.nft(negative_weight=1.0, negative_clip=1.0, normalize=1,
                              token_normalizer=1000.0 / UPDATE_SEQUENCES),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, schedule="constant"),
        train=common.paper_train(examples=DAPO_MATH_PROMPTS, batch=32,
                                 completions=RESPONSES_PER_PROMPT, seq_len=4096,
                                 max_prompt_len=512, microbatches=16),
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(
            source=sources.Unavailable(name="BytedTsinghua-SIA/DAPO-Math-17k",
                                       reason="no fbjax reader for DAPO-Math-17k"),
            encoder=common.OnlineEncoder(f"{RESPONSES_PER_PROMPT} rollouts per prompt checked "
                                         "by the answer verifier"),
            template=sources.Chat(common.CHATML)),
        evaluation=common.PaperEval(benchmark="AIME24, AIME25, AMC23 (avg@32); MATH500, Minerva, "
                                    "OlympiadBench", metric="accuracy"),
    )


STAGE = common.method(
    name="NFT", family="negative-aware (verifier)", feedback="correct / wrong per sample",
    objective=presets.nft(token_normalizer=1.0), build=sim_feedback.verified_groups,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="nft_chen2025")
