"""ILF: Scheurer et al. 2023, "Training Language Models with Language Feedback at Scale",
arXiv:2303.16755.

Imitation learning from Language Feedback: the model writes refinements of its outputs
conditioned on (input, output, feedback); the refinement that best incorporates the feedback
is selected (embedding similarity, or a reward model); the model is fine-tuned on
input -> refinement; repeat (``fbjax.data.language.ilf_loop``).

* ``paper``: summarisation with human feedback from SLF5K (5,000 Reddit posts with feedback on
  a model summary). The paper refines with and fine-tunes GPT-3 (175B, through the OpenAI API);
  Llama-2-7B stands in. Refinements are generated and selected online (ILF's loop), which
  fbjax's single-run recipe does not have, so the encoder is an
  :class:`~experiments.common.OnlineEncoder`. Fine-tuning hyperparameters are unverified.
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
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

SLF5K_TRAIN = 5_000


def paper() -> ExperimentConfig:
    return common.paper(
        "ilf_scheurer2023", checkpoint="meta-llama/Llama-2-7b-hf",
        objective=language_inputs.ilf(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=10, schedule="cosine"),
        train=common.paper_train(examples=SLF5K_TRAIN, batch=32, completions=1, seq_len=1024,
                                 max_prompt_len=896),
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(
            source=sources.SLF5K(view="feedback", split="train"),
            encoder=common.OnlineEncoder("refinements generated from (post, summary, feedback) "
                                         "and selected by similarity to the feedback")),
        evaluation=common.PaperEval(benchmark="SLF5K test posts",
                                    metric="human win rate against human-written summaries"),
    )


STAGE = common.method(
    name="ILF", family="language feedback", feedback="critique -> refinement",
    objective=language_inputs.ilf(), build=sim_feedback.refinement_sft,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="ilf_scheurer2023")
