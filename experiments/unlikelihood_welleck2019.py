"""Unlikelihood training: Welleck et al. 2019, "Neural Text Generation with Unlikelihood
Training", arXiv:1908.04319.

Unlikelihood pushes down the probability of tokens that should not be generated:
``-sum_t log(1 - p(y_t | y_<t))`` over the negative tokens (Sec. 4-5). The paper's
sequence-level variant fine-tunes a language model on its own greedy continuations, penalising
tokens inside repeated 4-grams (Table 2: repetition falls, perplexity barely moves).

* ``paper``: sequence-level fine-tuning, 1,500 updates, on WikiText-103. fbjax has neither the
  WikiText-103 reader nor the repeated-n-gram candidate stage (continuations decoded from the
  policy during training), so the data is :class:`~fbjax.data.sources.Unavailable`. The
  paper's 16-layer fairseq language model (trained from scratch) is replaced by GPT-2 medium,
  the supported model closest in depth and width; fbjax's unlikelihood objective is the
  negative-only one (the paper mixes it with likelihood on half the updates), and the batch and
  learning rate here are unverified.
* Expected (Table 2, as recalled): sequence repetition (seq-rep-4) falls from about 0.44 for
  MLE to near 0.05 with a small perplexity increase; check before quoting.
* ``sim``: token-level unlikelihood on the wrong digits of the SFT policy's wrong samples (the
  oracle's fault spans stand in for the paper's candidate tokens), without the paper's
  likelihood term (fbjax's objective is negative-only), at a small learning rate. It does not
  beat the SFT start (0.46 -> 0.45, seed 0): without likelihood on what is right, the mass
  taken off a wrong digit goes to the next most likely tokens, not to the right one.
* Compute (``paper``): 1,500 steps of 64 padded 150-token rows.

Run::

    fbjax train --experiment experiments/unlikelihood_welleck2019.py --workdir runs/ul_sim
"""

from __future__ import annotations

import dataclasses

from experiments import common
from fbjax.data import sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

SEQUENCE_LEVEL_UPDATES = 1_500


def paper() -> ExperimentConfig:
    # 50-token prefixes continued greedily for 100 tokens: 150-token sequences.
    return common.paper(
        "unlikelihood_welleck2019", checkpoint="openai-community/gpt2-medium",
        objective=presets.unlikelihood(),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant"),
        train=common.paper_train(examples=SEQUENCE_LEVEL_UPDATES * 64, batch=64, completions=1,
                                 seq_len=150, max_prompt_len=50),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(
            source=sources.Unavailable(name="WikiText-103",
                                       reason="no fbjax reader for WikiText-103"),
            encoder=common.OnlineEncoder("greedy continuations of 50-token prefixes with their "
                                         "repeated 4-gram tokens as negatives")),
        evaluation=common.PaperEval(benchmark="WikiText-103 test",
                                    metric="seq-rep-4, uniq-seq, perplexity, next-token accuracy"),
    )


# At the preference methods' 1e-4 unlikelihood wrecks the policy within 40 steps (oracle reward
# 0.46 -> 0.31 on the wrong digits, 0.13 on every token of the wrong answers), hence a 10x
# smaller learning rate, at which it barely moves (0.45, KL 0.01).
STAGE = common.method(
    name="UL", family="negative-only", feedback="wrong digits of bad samples",
    objective=presets.unlikelihood(), build=sim_feedback.fault_tokens, train=common.SIM_TRAIN,
    optimizer=dataclasses.replace(common.SIM_OPTIMIZER, learning_rate=1e-5),
)


get_config = common.variants(paper, STAGE, name="unlikelihood_welleck2019")
