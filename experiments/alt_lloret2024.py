"""ALT: Lloret, Dhuliawala, Murugesan, Sachan 2024, "Towards Aligning Language Models with
Textual Feedback", arXiv:2407.16970 (EMNLP 2024; id as recalled, check before citing).

ALignment with Textual feedback conditions generation on feedback text: the model is trained by
likelihood on (feedback, prompt) -> the output that received that feedback, samples conditioned
on the feedback an ideal output would get, and iterates with fresh feedback on its new samples
(Quark-style explore / feedback / train loop with text in place of reward tokens).

* ``paper``: toxicity reduction on RealToxicityPrompts from GPT-2 large (the Quark setup; the
  paper also runs summarisation and dialogue) as an online stage
  (:class:`~fbjax.run.config.OnlineStage`): sample continuations from the current policy
  conditioned on the feedback of a non-toxic one (``NONTOXIC_FEEDBACK``), have them scored,
  train (feedback, prompt) -> continuation. The paper's feedback is the Perspective API's
  toxicity score bucketed into 5 quantile tags (``paper_provider``); fbjax has no local toxicity
  scorer, so the provider is :class:`~fbjax.run.online.Unavailable` and the run fails before
  sampling, naming it (a provider of your own can replace it in the config). As in the paper,
  the first round samples unconditioned (``plain_first_round``). fbjax has no
  RealToxicityPrompts reader either. Models, learning rate, batch, rounds, samples per prompt
  and continuation length are unverified.
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
from fbjax import sampling
from fbjax.data import language, sources, templates
from fbjax.run import online, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

EXPLORE_SAMPLES = 64_000


NONTOXIC_FEEDBACK = "Lowest toxicity"


def nontoxic_prompt(prompt: str) -> str:
    return templates.feedback_conditioned_prompt(prompt, NONTOXIC_FEEDBACK)


def paper() -> ExperimentConfig:
    stage = OnlineStage(
        name="train",
        data=sources.Dataset(source=sources.Unavailable(
            name="allenai/real-toxicity-prompts", reason="no fbjax reader")),
        prompts=online.DatasetPrompts(num_prompts=EXPLORE_SAMPLES),
        prompt_template=nontoxic_prompt,
        plain_first_round=True,
        provider=online.Unavailable(what="Perspective API toxicity scores bucketed into 5 "
                                    "quantile feedback tags (fbjax has no toxicity scorer)"),
        paper_provider="Perspective API toxicity scores as 5 quantile feedback tags",
        encode=language.feedback_conditioned_groups,
        objective=language_inputs.alt(),
        rounds=1,
        samples_per_prompt=1,
        sampling=sampling.SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.9),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=100, schedule="linear"),
        train=common.paper_train(examples=EXPLORE_SAMPLES, batch=64, completions=1, seq_len=128,
                                 max_prompt_len=96),
        family="language feedback", feedback="critique as condition",
    )
    return common.online_paper(
        "alt_lloret2024", checkpoint="openai-community/gpt2-large", stages=(stage,),
        mesh=common.MESH_FSDP,
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
