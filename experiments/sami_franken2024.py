"""SAMI: Fränken, Zelikman, Rafailov, Gandhi, Gerstenberg, Goodman 2024, "Self-Supervised
Alignment with Mutual Information: Learning to Follow Principles without Preference Labels",
arXiv:2404.14313.

SAMI teaches a model to follow written principles (a "constitution") with no preference labels:
for a query and n constitutions, responses sampled under each constitution form the matrix
``L_ij = log p(y_j | x, c_i)``, trained with a symmetric InfoNCE loss whose targets are the
diagonal, a lower bound on the conditional mutual information between constitution and response
(``fbjax.objectives.language.sami``).

* ``paper``: Mistral-7B (base) on single-turn dialogue (Anthropic HH prompts) with constitutions
  written by a stronger model; the paper also runs TL;DR summarisation and Mixtral-8x7B. Three
  iterations as one online stage of 3 rounds (:class:`~fbjax.run.config.OnlineStage`): each
  round decodes one response per query under each constitution from the current policy,
  greedily as the released generation config does (``temperature: 0.0``; a query whose two
  responses are the same text is dropped, as ``generate.py`` drops it:
  ``language.sami_groups``) (``online_records.ConstitutionPrompts``) and trains SAMI's matrix
  on them. The released trainer uses RMSprop at 5e-7; fbjax's optimizer is AdamW. No feedback is
  asked (``paper_provider``): the constitutions are the signal. The paper's constitutions were
  written by another model and do not ship with fbjax: set them with ``--set
  stages.train.prompts.constitutions="('...', '...')"``; a run without them fails before
  sampling, naming that path. Two constitutions per query, queries per round, the learning
  rate and batch are unverified.
* Expected (as recalled): the SAMI-trained base model's win rate against the initial model
  (judged by a stronger model against the constitution) rises to roughly 66-77% on dialogue;
  check before quoting.
* ``sim``: the principles "A correct answer:" / "An incorrect answer:"; each prompt's best sample
  stands in for the response under the first and its worst for the response under the second.
  Evaluation conditions on the first principle. The SFT start itself scores 0.11 under that
  prompt (0.46 plain): the tiny policy cannot read a principle, and SAMI's loss compares
  likelihoods across principles and responses without ever raising them, so it cannot teach
  the new format (0.11 -> 0.13 after 40 steps; after 160, 0.11 and still unable to tell the
  principles apart). See the docs table.
* Compute (``paper``): per round, 2 responses per query (up to 256 tokens) and 138 steps of
  128 rows of 1024 tokens (2 x 2 per query); 3 rounds.

Run::

    fbjax train --experiment experiments/sami_franken2024.py --workdir runs/sami_sim
"""

from __future__ import annotations

from experiments import common
from fbjax import sampling
from fbjax.data import sources
from fbjax.run import online_records, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

CONSTITUTIONS = 2
QUERIES = 4_400


ITERATIONS = 3


def paper() -> ExperimentConfig:
    stage = OnlineStage(
        name="train",
        data=sources.Dataset(source=sources.HHRLHF(subset="helpful-base", split="train")),
        prompts=online_records.ConstitutionPrompts(num_prompts=QUERIES),
        provider=online_records.UNDER_CONSTITUTION,
        paper_provider="none asked: responses sampled under constitutions written by another "
                       "model",
        encode=online_records.sami_online_groups,
        objective=language_inputs.sami(CONSTITUTIONS),
        rounds=ITERATIONS,
        samples_per_prompt=1,
        sampling=sampling.SamplingConfig(max_new_tokens=256, temperature=0.0),
        optimizer=OptimizerConfig(learning_rate=5e-7, warmup_steps=0, schedule="constant"),
        train=common.paper_train(examples=QUERIES, batch=32, completions=CONSTITUTIONS ** 2,
                                 seq_len=1024, max_prompt_len=768, microbatches=4),
        family="language feedback", feedback="written principles",
    )
    return common.online_paper(
        "sami_franken2024", checkpoint="mistralai/Mistral-7B-v0.1", stages=(stage,),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="Anthropic HH single-turn prompts (dialogue)",
                                    metric="win rate against the initial model, judged against "
                                           "the constitution"),
    )


# SAMI's loss is contrastive, like DPO's, not a likelihood of a new format: the preference
# methods' stage. (With the likelihood methods' 10x learning rate and 9x steps the policy
# drifted further: oracle reward 0.48 -> 0.06 against 0.14 here.)
STAGE = common.method(
    name="SAMI", family="language feedback", feedback="written principles",
    objective=language_inputs.sami(CONSTITUTIONS), build=sim_feedback.constitution_matrix,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
    eval_prompt=sim_feedback.principled_prompt,
)


get_config = common.variants(paper, STAGE, name="sami_franken2024")
