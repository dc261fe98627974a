"""ALT: Lloret, Dhuliawala, Murugesan, Sachan 2024, "Towards Aligning Language Models with
Textual Feedback", arXiv:2407.16970 (EMNLP 2024; id as recalled, check before citing).

ALignment with Textual feedback conditions generation on feedback text: the model is trained by
likelihood on (feedback, prompt) -> the output that received that feedback, samples conditioned
on the feedback an ideal output would get, and iterates with fresh feedback on its new samples
(Quark-style explore / feedback / train loop with text in place of reward tokens).

* ``paper``: toxicity reduction on RealToxicityPrompts from GPT-2 large (the Quark setup; the
  paper also runs summarisation and dialogue), feedback produced online by a scorer / LLM. fbjax
  has no RealToxicityPrompts reader and no explore stage
  (:class:`~fbjax.data.sources.Unavailable`, :class:`~experiments.common.OnlineEncoder`).
  Models, learning rate, batch and iteration counts are unverified.
* Expected (as recalled): toxicity lower than Quark's at similar fluency; no number recorded.
* ``sim``: the task's critiques as the feedback; evaluation samples conditioned on the critique
  a correct answer gets.
* Compute (``paper``): per iteration, sampling continuations for the training prompts, scoring
  them, and 1,000 steps of 64 rows of 128 tokens (GPT-2 large).

Run::

    fbjax train --experiment experiments/alt_lloret2024.py --workdir runs/alt_sim
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

EXPLORE_SAMPLES = 64_000


def paper() -> ExperimentConfig:
    return common.paper(
        "alt_lloret2024", checkpoint="openai-community/gpt2-large",
        objective=language_inputs.alt(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=100, schedule="linear"),
        train=common.paper_train(examples=EXPLORE_SAMPLES, batch=64, completions=1, seq_len=128,
                                 max_prompt_len=96),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(
            source=sources.Unavailable(name="allenai/real-toxicity-prompts + textual feedback",
                                       reason="no fbjax reader; feedback is generated online"),
            encoder=sources.with_prompt_text(language.feedback_conditioned_groups)),
        evaluation=common.PaperEval(benchmark="RealToxicityPrompts (test)",
                                    metric="toxicity (Perspective API), fluency, diversity"),
    )


STAGE = common.method(
    name="ALT", family="language feedback", feedback="critique as condition",
    objective=language_inputs.alt(), build=sim_feedback.feedback_conditioned,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
    eval_prompt=sim_feedback.desired_feedback_prompt,
)


get_config = common.variants(paper, STAGE, name="alt_lloret2024")
