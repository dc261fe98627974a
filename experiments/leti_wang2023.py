"""LeTI: Wang, Peng, Jabbarvand, Ji 2023, "LETI: Learning to Generate from Textual
Interactions", arXiv:2305.10314.

LeTI fine-tunes a code model, with the plain language-modelling objective, on sequences of a
binary reward token, the instruction, the model's program and the interpreter's error message;
at inference it conditions on the good token. It needs no ground-truth programs.

* ``paper``: MBPP code generation with Python execution feedback, CodeGen-mono 350M and 2B
  (not a supported family); Qwen2.5-Coder-0.5B, the supported code model closest in size to the
  350M model, stands in. fbjax has no MBPP reader and no execution stage
  (:class:`~fbjax.data.sources.Unavailable`, :class:`~experiments.common.OnlineEncoder`).
  Iterations, learning rate and batch are unverified.
* Expected (as recalled): higher MBPP pass@1 than the base model and than fine-tuning with the
  binary reward alone, with fewer gradient steps; no number recorded here.
* ``sim``: the task's critique stands in for the error message; failures get it after
  ``<|bad|>``, successes ``<|good|>`` alone.
* Compute (``paper``): per iteration, sampling programs for the 374 MBPP training problems and
  running them, then 12 steps of 128 rows of 512 tokens.

Run::

    fbjax train --experiment experiments/leti_wang2023.py --workdir runs/leti_sim
"""

from __future__ import annotations

from experiments import common
from fbjax.data import sources, templates
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

MBPP_TRAIN = 374
SAMPLES_PER_PROBLEM = 4


def paper() -> ExperimentConfig:
    return common.paper(
        "leti_wang2023", checkpoint="Qwen/Qwen2.5-Coder-0.5B",
        objective=language_inputs.leti(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant"),
        train=common.paper_train(examples=MBPP_TRAIN * SAMPLES_PER_PROBLEM, batch=128,
                                 completions=1, seq_len=512, max_prompt_len=256),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(
            source=sources.Unavailable(name="MBPP with Python execution feedback",
                                       reason="no fbjax reader for MBPP, no code execution"),
            encoder=common.OnlineEncoder("programs sampled per problem and executed for "
                                         "their reward token and error messages")),
        evaluation=common.PaperEval(benchmark="MBPP test; HumanEval", metric="pass@1"),
    )


STAGE = common.method(
    name="LeTI", family="language feedback", feedback="reward token + critique",
    objective=language_inputs.leti(), build=sim_feedback.leti_sequences,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
    eval_prompt=templates.leti_prompt,
)


get_config = common.variants(paper, STAGE, name="leti_wang2023")
