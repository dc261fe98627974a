"""Chain of Hindsight: Liu, Sferrazza, Abbeel 2023, "Chain of Hindsight Aligns Language Models
with Feedback", arXiv:2302.02676.

CoH turns every kind of feedback into language: the outputs of a prompt are joined in one
sequence, each introduced by a feedback phrase ("A helpful answer: ... An unhelpful answer:
..."), and the model is trained by likelihood on the outputs only, with 0-5% of the past tokens
masked so it cannot copy; at test time it is prompted with a positive phrase.

* ``paper``: the paper's mixture of human-feedback data: TL;DR summary comparisons, Anthropic HH
  and WebGPT comparisons (fbjax has no WebGPT reader: that part is
  :class:`~fbjax.data.sources.Unavailable`), pairs written as two-output hindsight sequences. The
  paper fine-tunes GPT-J 6B (not a supported family); Llama-2-7B, the supported model of the
  same size, stands in. The pretraining-data term the paper mixes in is off
  (``fbjax.data.language.pretraining_groups`` adds it). Learning rate, batch, length and the
  single epoch are unverified.
* Expected (Sec. 4, as recalled): CoH above SFT and RLHF baselines in ROUGE and human preference
  on TL;DR and in human preference on HH dialogue; no number recorded here.
* ``sim``: each prompt's 4 samples, phrased good (reward 1) or bad, in one hindsight sequence,
  every output ended by a trained EOS (the reference code's single-output sequences teach the
  same stop; without it the policy never ended the output it is prompted for), 1,080 steps.
  The ``paper`` sequences (``common.coh_groups``) end every output with EOS too, in place of
  the reference code's mixture of one- and two-output sequences.
* Compute (``paper``): 3,964 steps (one epoch) of 64 padded 1024-token rows on a 7B model.

Run::

    fbjax train --experiment experiments/coh_liu2023.py --workdir runs/coh_sim
"""

from __future__ import annotations

import dataclasses

from experiments import common, dpo_rafailov2023
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

# TL;DR comparisons (92.9k) + HH (160.8k); WebGPT's 19.6k comparisons are not counted.
COH_PAIRS = 92_858 + dpo_rafailov2023.HH_TRAIN_PAIRS


def paper() -> ExperimentConfig:
    return common.paper(
        "coh_liu2023", checkpoint="meta-llama/Llama-2-7b-hf",
        objective=language_inputs.chain_of_hindsight(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=100, schedule="cosine"),
        train=common.paper_train(examples=COH_PAIRS, batch=64, completions=1, seq_len=1024,
                                 max_prompt_len=512, microbatches=2),
        mesh=common.MESH_FSDP_TP4,
        data=sources.Dataset(
            source=sources.Mixture(parts=(
                sources.TLDRComparisons(split="train"),
                dpo_rafailov2023.hh_all(),
                sources.Unavailable(name="openai/webgpt_comparisons",
                                    reason="no fbjax reader for WebGPT comparisons"),
            )),
            encoder=common.coh_groups),
        evaluation=common.PaperEval(benchmark="TL;DR (summarisation), Anthropic HH (dialogue)",
                                    metric="ROUGE; human preference against baselines"),
    )


# The policy has to learn to read the phrase: at the likelihood methods' 360 steps samples under
# "A helpful answer:" and "An unhelpful answer:" were the same (oracle reward 0.35 either way),
# at 720 the helpful ones were ahead (0.51 vs 0.33), at 1,080 clearly (0.68 vs 0.34).
STAGE = common.method(
    name="CoH", family="language feedback", feedback="good/bad hindsight phrases",
    objective=language_inputs.chain_of_hindsight(), build=sim_feedback.hindsight,
    train=dataclasses.replace(common.SIM_LM_TRAIN, steps=1080), optimizer=common.SIM_LM_OPTIMIZER,
    eval_prompt=sim_feedback.coh_eval_prompt,
)


get_config = common.variants(paper, STAGE, name="coh_liu2023")
