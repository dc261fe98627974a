"""IRPO: Wu, Surana et al. 2025, "In-context Ranking Preference Optimization",
arXiv:2504.15477.

IRPO optimises a ranked list generated in one response: each item's log-ratio is compared with
the log-sum-exp of the others, weighted by its graded relevance and a position discount
(``(2^rel - 1) / log2(1 + position)``, the DCG gain), as in the official ``rdpo_loss``.

* ``paper``: conversational recommendation on ReDial (the README's ``[reddit]`` data; fbjax has
  no reader: :class:`~fbjax.data.sources.Unavailable`), beta = 1.0, learning rate 1e-5, batch 32
  with 8 accumulation steps, 3 epochs. The paper's models (Llama-3.2-3B, Gemma-2-2B,
  Phi-3-mini) are not loadable (Llama 3.2 uses RoPE scaling, Gemma 2 and Phi-3 are unsupported
  families); Qwen2.5-3B-Instruct, the supported model closest in size, stands in. The number of
  training lists is not recorded; the 10k here only sizes the schedule.
* Expected: NDCG@k / Recall@k above SFT and pairwise DPO (no number recorded here).
* ``sim``: the 4 samples of a prompt as the items of one list, relevance = graded oracle reward.
  In the paper the items share one response; here each is its own completion, which is what
  fbjax's listwise layout scores.
* Compute (``paper``): 938 steps of 320 padded 512-token rows (10 items per list, in 8
  microbatches); ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/irpo_wu2025.py --workdir runs/irpo_sim
"""

from __future__ import annotations

import functools

from experiments import common
from fbjax.data import listwise, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

ITEMS_PER_LIST = 10
REDIAL_LISTS = 10_000



def paper() -> ExperimentConfig:
    return common.paper(
        "irpo_wu2025", checkpoint="Qwen/Qwen2.5-3B-Instruct",
        objective=presets.irpo(ITEMS_PER_LIST, beta=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant"),
        train=common.paper_train(examples=REDIAL_LISTS, batch=32, completions=ITEMS_PER_LIST,
                                 seq_len=512, max_prompt_len=448, epochs=3, microbatches=8),
        mesh=common.MESH_FSDP,
        data=sources.Dataset(
            source=sources.Unavailable(name="ReDial conversational recommendation lists",
                                       reason="no fbjax reader for ReDial"),
            encoder=functools.partial(listwise.ranked_groups, size=ITEMS_PER_LIST),
            template=sources.Chat(common.CHATML)),
        evaluation=common.PaperEval(benchmark="ReDial", metric="NDCG@k, Recall@k, MRR"),
    )


STAGE = common.method(
    name="IRPO", family="ranked lists", feedback="graded relevance of 4 samples",
    objective=presets.irpo(common.SAMPLES_PER_PROMPT, beta=1.0),
    build=sim_feedback.ranked_lists, train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="irpo_wu2025")
