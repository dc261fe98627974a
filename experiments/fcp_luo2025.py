"""FCP: Luo, Liu, Liu, Du, Lin, Chen, Lu, Pang 2025, "Language Models Can Learn from Verbal
Feedback Without Scalar Rewards", arXiv:2509.22638.

The feedback-conditional policy treats verbal feedback as a condition, not a reward: it learns
``pi(y | x, feedback)`` by maximum likelihood on offline (response, feedback) pairs, then
bootstraps online by sampling under *positive* feedback conditions and training on the fresh
feedback those samples receive.

* ``paper``: the offline stage (``offline``) on the released SFT sets
  (``RogerLos/FCP_big_math_pro_SFT``: math problems, responses and GPT-generated critiques;
  fbjax has no reader: :class:`~fbjax.data.sources.Unavailable`), trained with LLaMA-Factory's
  SFT, then the online bootstrapping (``train``, an :class:`~fbjax.run.config.OnlineStage`,
  run in verl by the paper): 4 rollouts per problem sampled from the current policy conditioned
  on positive feedback (``positive_feedback_prompt``), fresh critiques of them, and the same
  likelihood on (critique, problem) -> rollout. The paper's critiques came from an LLM critic
  (``paper_provider``); a local judge checkpoint stands in (``--set
  stages.train.provider.checkpoint=DIR``); without it the run fails before any stage trains.
  The base model (Qwen2.5-7B here), the positive condition's wording, the number of online
  rounds, learning rates, batch and sizes are unverified.
* Expected (as recalled): on par with scalar-reward RL (rejection-sampling fine-tuning, GRPO) on
  math and general reasoning benchmarks; no number recorded here.
* ``sim``: one offline round on the task's critiques; evaluation samples conditioned on the
  critique a correct answer gets (as :mod:`experiments.alt_lloret2024`, the objective is the
  same feedback-conditioned likelihood).
* Compute (``paper``): 782 steps of 128 padded 4096-token rows on 7B for the offline stage;
  online, 40,000 rollouts of up to 3,072 tokens, their critiques and 313 steps of 128 rows.

Run::

    fbjax train --experiment experiments/fcp_luo2025.py --workdir runs/fcp_sim
"""

from __future__ import annotations

from experiments import common
from fbjax import sampling
from fbjax.data import language, sources, templates
from fbjax.feedback import CritiqueTemplate
from fbjax.run import online, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage, TrainStage
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

OFFLINE_EXAMPLES = 100_000


ONLINE_PROMPTS = 10_000
ROLLOUTS_PER_PROMPT = 4
# The condition online rollouts are sampled under: feedback a fully correct response would get.
POSITIVE_FEEDBACK = "The response is correct, complete and clearly reasoned."


def positive_feedback_prompt(prompt: str) -> str:
    return templates.feedback_conditioned_prompt(prompt, POSITIVE_FEEDBACK)


def paper() -> ExperimentConfig:
    problems = sources.Unavailable(name="RogerLos/FCP_big_math_pro_SFT",
                                   reason="no fbjax reader for the FCP SFT sets")
    offline = TrainStage(
        name="offline",
        objective=language_inputs.feedback_conditioned(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=30, schedule="cosine"),
        train=common.paper_train(examples=OFFLINE_EXAMPLES, batch=128, completions=1,
                                 seq_len=4096, max_prompt_len=1024, microbatches=16),
        data=sources.Dataset(
            source=problems,
            encoder=sources.with_prompt_text(language.feedback_conditioned_groups),
            template=sources.Chat(common.CHATML)),
    )
    bootstrap = OnlineStage(
        name="train", start="offline",
        data=sources.Dataset(source=problems, template=sources.Chat(common.CHATML)),
        prompts=online.DatasetPrompts(num_prompts=ONLINE_PROMPTS),
        prompt_template=positive_feedback_prompt,
        provider=common.judge(CritiqueTemplate(), "the paper's LLM critic"),
        paper_provider="critiques of each rollout written by an LLM critic",
        encode=language.feedback_conditioned_groups,
        objective=language_inputs.feedback_conditioned(),
        rounds=1,
        samples_per_prompt=ROLLOUTS_PER_PROMPT,
        sampling=sampling.SamplingConfig(max_new_tokens=3072, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, schedule="constant"),
        train=common.paper_train(examples=ONLINE_PROMPTS * ROLLOUTS_PER_PROMPT, batch=128,
                                 completions=1, seq_len=4096, max_prompt_len=1024,
                                 microbatches=16),
        family="language feedback", feedback="critique as condition (online)",
    )
    return common.online_paper(
        "fcp_luo2025", checkpoint="Qwen/Qwen2.5-7B", stages=(offline, bootstrap),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="math (e.g. MATH500, AIME) and general reasoning "
                                    "benchmarks", metric="accuracy"),
    )


STAGE = common.method(
    name="FCP", family="language feedback", feedback="critique as condition",
    objective=language_inputs.feedback_conditioned(), build=sim_feedback.feedback_conditioned,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
    eval_prompt=sim_feedback.desired_feedback_prompt,
)


get_config = common.variants(paper, STAGE, name="fcp_luo2025")
