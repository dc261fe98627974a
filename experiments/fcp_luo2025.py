"""FCP: Luo, Liu, Liu, Du, Lin, Chen, Lu, Pang 2025, "Language Models Can Learn from Verbal
Feedback Without Scalar Rewards", arXiv:2509.22638.

The feedback-conditional policy treats verbal feedback as a condition, not a reward: it learns
``pi(y | x, feedback)`` by maximum likelihood on offline (response, feedback) pairs, then
bootstraps online by sampling under *positive* feedback conditions and training on the fresh
feedback those samples receive.

* ``paper``: the offline stage on the released SFT sets (``RogerLos/FCP_big_math_pro_SFT``:
  math problems, responses and GPT-generated critiques; fbjax has no reader:
  :class:`~fbjax.data.sources.Unavailable`), trained with LLaMA-Factory's SFT; the online stage
  runs in verl. The base model (Qwen2.5-7B here), learning rate, batch and sizes are unverified.
* Expected (as recalled): on par with scalar-reward RL (rejection-sampling fine-tuning, GRPO) on
  math and general reasoning benchmarks; no number recorded here.
* ``sim``: one offline round on the task's critiques; evaluation samples conditioned on the
  critique a correct answer gets (as :mod:`experiments.alt_lloret2024`, the objective is the
  same feedback-conditioned likelihood).
* Compute (``paper``): 782 steps of 128 padded 4096-token rows on 7B for the offline stage.

Run::

    fbjax train --experiment experiments/fcp_luo2025.py --workdir runs/fcp_sim
"""

from __future__ import annotations

from experiments import common
from fbjax.data import language, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

OFFLINE_EXAMPLES = 100_000


def paper() -> ExperimentConfig:
    return common.paper(
        "fcp_luo2025", checkpoint="Qwen/Qwen2.5-7B",
        objective=language_inputs.feedback_conditioned(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=30, schedule="cosine"),
        train=common.paper_train(examples=OFFLINE_EXAMPLES, batch=128, completions=1,
                                 seq_len=4096, max_prompt_len=1024, microbatches=16),
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(
            source=sources.Unavailable(name="RogerLos/FCP_big_math_pro_SFT",
                                       reason="no fbjax reader for the FCP SFT sets"),
            encoder=sources.with_prompt_text(language.feedback_conditioned_groups),
            template=sources.Chat(common.CHATML)),
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
