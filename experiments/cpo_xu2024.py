"""CPO: Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
Performance in Machine Translation", arXiv:2401.08417.

CPO is a reference-free DPO (the policy's own summed log-probabilities as rewards) plus the NLL
of the preferred translation: ``-log sigmoid(beta (logp(y_w) - logp(y_l))) + NLL(y_w)``.

* ``paper``: ALMA-13B-R: ``haoranxu/ALMA-13B-Pretrain`` (Llama-2-13B architecture) on the
  ALMA-R triplet preference data (``haoranxu/ALMA-R-Preference``: FLORES-200 sources with
  reference, GPT-4 and ALMA translations ranked by reference-free COMET models; about 20k
  triplets over 10 directions), beta = 0.1, learning rate 1e-4, 1% warmup, one epoch, 512-token
  sequences, batch 128 (the release's ``runs/cpo_ft.sh``). fbjax has no reader for that dataset
  (the data source is :class:`~fbjax.data.sources.Unavailable`) and no LoRA: the paper tunes
  LoRA adapters, this config the full model. The paper decays with ``inverse_sqrt``; linear here.
* Expected: ALMA-13B-R matching or exceeding WMT competition winners and GPT-4 on WMT'21-'23
  under reference-free COMET (KIWI-XXL, XCOMET); no number recorded here.
* Compute (``paper``): 157 steps of 256 padded 512-token rows on a 13B model, policy only:
  about 1.6e18 FLOPs; ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/cpo_xu2024.py --workdir runs/cpo_sim
"""

from __future__ import annotations

from experiments import common
from fbjax.data import encode, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

ALMA_R_TRIPLETS = 20_000


def paper() -> ExperimentConfig:
    train = common.paper_train(examples=ALMA_R_TRIPLETS, batch=128, completions=2, seq_len=512,
                               max_prompt_len=256, microbatches=4)
    return common.paper(
        "cpo_xu2024", checkpoint="haoranxu/ALMA-13B-Pretrain",
        objective=presets.cpo(beta=0.1, nll_weight=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-4, schedule="linear",
                                  warmup_steps=max(1, round(0.01 * train.steps))),
        train=train,
        mesh=common.MESH_FSDP_TP8,
        data=sources.Dataset(
            source=sources.Unavailable(name="haoranxu/ALMA-R-Preference",
                                       reason="no fbjax reader for the ALMA-R triplets"),
            encoder=encode.paired),
        evaluation=common.PaperEval(benchmark="WMT'21-'23 (10 directions)",
                                    metric="KIWI-XXL, XCOMET (reference-free COMET)"),
    )


STAGE = common.method(
    name="CPO", family="paired preference", feedback="pairwise preference",
    objective=presets.cpo(beta=0.1), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="cpo_xu2024")
