"""Conditional training: Korbak et al. 2023, "Pretraining Language Models with Human
Preferences", arXiv:2302.08582.

Conditional training prefixes each training segment with ``<|good|>`` or ``<|bad|>`` according to
a reward threshold and trains by plain likelihood; generation is conditioned on ``<|good|>``.
The paper found it the best of five objectives for *pretraining* with feedback (Fig. 2).

* ``paper``: pretraining GPT-2 small from scratch (``init_from=None``) on 3.3B tokens of the Pile
  scored for toxicity (``tomekkorbak/detoxify-pile-chunk3-*``; fbjax has no reader:
  :class:`~fbjax.data.sources.Unavailable`), sentences tagged by a score threshold, 1024-token
  sequences, batch 64 sequences: about 50k steps. Learning rate and warmup are unverified.
* Expected (Fig. 2, as recalled): conditional training lowers the misalignment score (toxicity)
  by up to an order of magnitude at a small cost in LM loss; no number recorded here.
* ``sim``: ``<|good|>`` iff the oracle reward is 1, on the SFT policy's samples (fine-tuning, not
  pretraining); evaluation conditions on ``<|good|>``.
* Compute (``paper``): about 50k steps of 64 x 1024 tokens on a 124M model, about 2.5e18 FLOPs.

Run::

    fbjax train --experiment experiments/conditional_korbak2023.py --workdir runs/cond_sim
"""

from __future__ import annotations

import dataclasses
import functools

from experiments import common
from fbjax.data import language, sources, templates
from fbjax.models import config as mc
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig, single
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

PRETRAINING_TOKENS = 3_300_000_000
SEQ_LEN = 1024
# Segments scoring at least this (negated toxicity, so higher is better) get <|good|>: the
# released configs/toxicity/conditional.yml tags aligned iff toxicity <= 0.00056.
GOOD_SCORE_THRESHOLD = -0.00056


def paper() -> ExperimentConfig:
    return single(
        name="conditional_korbak2023",
        # Pretraining from scratch: GPT-2 small's architecture, random initialisation.
        model=mc.gpt2(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                      mlp_dim=3072, max_seq_len=1024, dtype="bfloat16", remat="block"),
        objective=language_inputs.conditional_training(),
        optimizer=OptimizerConfig(learning_rate=5e-4, warmup_steps=1000, schedule="linear",
                                  weight_decay=0.1),
        train=dataclasses.replace(
            common.paper_train(examples=PRETRAINING_TOKENS // SEQ_LEN, batch=64, completions=1,
                               seq_len=SEQ_LEN, max_prompt_len=8),
            packing=True),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(
            source=sources.Unavailable(name="tomekkorbak/detoxify-pile-chunk3-*",
                                       reason="no fbjax reader for the scored Pile chunks"),
            encoder=sources.with_prompt_text(functools.partial(
                language.conditional_groups, threshold=GOOD_SCORE_THRESHOLD))),
        evaluation=common.PaperEval(benchmark="unconditional and RealToxicityPrompts samples",
                                    metric="misalignment score (Detoxify toxicity), LM loss"),
    )


STAGE = common.method(
    name="Conditional", family="language feedback", feedback="<|good|>/<|bad|> control token",
    objective=language_inputs.conditional_training(), build=sim_feedback.control_tokens,
    train=common.SIM_LM_TRAIN, optimizer=common.SIM_LM_OPTIMIZER,
    eval_prompt=templates.conditional_prompt,
)


get_config = common.variants(paper, STAGE, name="conditional_korbak2023")
