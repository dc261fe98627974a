"""ILF: Scheurer et al. 2023, "Training Language Models with Language Feedback at Scale",
arXiv:2303.16755.

Imitation learning from Language Feedback: the model writes refinements of its outputs
conditioned on (input, output, feedback); the refinement that best incorporates the feedback
is selected (embedding similarity, or a reward model); the model is fine-tuned on
input -> refinement; repeat (``fbjax.data.language.ilf_loop``).

* ``paper``: summarisation of SLF5K's 5,000 training posts, one online round
  (:class:`~fbjax.run.config.OnlineStage`): one summary per post sampled from the policy,
  feedback written on it, refinements written from (post, summary, feedback), the one most
  similar to the feedback kept, and the policy fine-tuned on post -> refinement. The paper's
  feedback came from human annotators and its refinements from InstructGPT (``paper_provider``);
  here a local judge checkpoint stands in for each (``fbjax.run.online.Refine``: set
  ``--set stages.train.provider.critic.checkpoint=DIR`` and
  ``--set stages.train.provider.refiner.checkpoint=DIR``; a run without them fails before
  sampling, naming the path). Bag-of-words cosine stands in for the paper's embedding
  similarity. The paper refines with and fine-tunes GPT-3 (175B, through the OpenAI API);
  Llama-2-7B stands in. The 5 refinements per summary, one round, the sampling lengths and the
  fine-tuning hyperparameters are as recalled, unverified.
* Expected (abstract, as recalled): ILF's summaries, combined with best-of-N under a reward
  model, are preferred to human-written summaries about half the time; check before quoting.
* ``sim``: one ILF round with the task's oracle as the refiner (a perfect refiner in place of
  the model's own refinements and their selection): fine-tune on input -> refinement of every
  SFT sample.
* Compute (``paper``): 157 steps of 32 padded 1024-token rows per round, plus generating and
  scoring the refinements.

Run::

    fbjax train --experiment experiments/ilf_scheurer2023.py --workdir runs/ilf_sim
"""

from __future__ import annotations

from experiments import common
from fbjax import sampling
from fbjax.data import language, sources
from fbjax.feedback import CritiqueTemplate, RefinementTemplate
from fbjax.run import online, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

SLF5K_TRAIN = 5_000


REFINEMENTS_PER_SUMMARY = 5


def paper() -> ExperimentConfig:
    stage = OnlineStage(
        name="train",
        data=sources.Dataset(source=sources.SLF5K(view="feedback", split="train")),
        prompts=online.DatasetPrompts(num_prompts=SLF5K_TRAIN),
        provider=online.Refine(
            critic=common.judge(CritiqueTemplate(), "human annotators' written feedback"),
            refiner=common.judge(RefinementTemplate(), "InstructGPT refinements",
                                 temperature=1.0),
            candidates=REFINEMENTS_PER_SUMMARY),
        paper_provider="human annotators' written feedback (SLF5K's annotation protocol); "
                       f"InstructGPT refinements, {REFINEMENTS_PER_SUMMARY} per summary, the one "
                       "most similar to the feedback kept (embedding similarity)",
        encode=language.ilf_refinement_groups,
        objective=language_inputs.ilf(),
        rounds=1,
        samples_per_prompt=1,
        sampling=sampling.SamplingConfig(max_new_tokens=128, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=10, schedule="cosine"),
        train=common.paper_train(examples=SLF5K_TRAIN, batch=32, completions=1, seq_len=1024,
                                 max_prompt_len=896),
        family="language feedback", feedback="critique -> refinement",
    )
    return common.online_paper(
        "ilf_scheurer2023", checkpoint="meta-llama/Llama-2-7b-hf", stages=(stage,),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="SLF5K test posts",
                                    metric="human win rate against human-written summaries"),
    )


STAGE = common.method(
    name="ILF", family="language feedback", feedback="critique -> refinement",
    objective=language_inputs.ilf(), build=sim_feedback.refinement_sft,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="ilf_scheurer2023")
