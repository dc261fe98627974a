"""DPO: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv:2305.18290.

Reproduces the single-turn dialogue experiment (Anthropic HH, Fig. 3: win rate against the
preferred HH response, judged by GPT-4): an SFT model is trained with
``-log sigmoid(beta * h)`` (Eq. 7) on all HH-RLHF training pairs, beta = 0.1, batch 64 pairs,
learning rate 1e-6 (App. B), 150 warmup steps, one epoch, the original code's 512-token
sequences with 256-token prompts.

* Model: Pythia-2.8B (GPT-NeoX: parallel residual, partial rotary), the paper's own SFT start
  is Pythia-2.8B fine-tuned on the preferred HH responses; ``init_from`` names the base
  checkpoint, so run SFT first or point ``--set init_from=DIR`` at an SFT checkpoint.
* Optimizer: the original code uses RMSprop; fbjax has AdamW only.
* Expected (paper, Fig. 3): DPO is the only method above the preferred responses, a GPT-4 win
  rate of about 0.6 at sampling temperature 0.25 (read off the plot).
* Compute (``paper``): 2,513 steps of 128 padded 512-token rows (policy forward and backward
  plus a reference forward), about 4e18 FLOPs for Pythia-2.8B: about an hour on one 8 x A100 node
  at 40% utilisation.
  ``sim``: minutes on 2 CPU cores.

Run::

    fbjax train --experiment experiments/dpo_rafailov2023.py --workdir runs/dpo_sim
    huggingface-cli download EleutherAI/pythia-2.8b   # fbjax reads the hub cache, never downloads
    fbjax train --experiment experiments/dpo_rafailov2023.py:paper --workdir runs/dpo

(weights and tokenizer come from the checkpoint ``init_from`` names) with the HH-RLHF release
under TFDS's manual directory (``~/tensorflow_datasets/downloads/manual/<subset>/
{train,test}.jsonl.gz``) or each source's ``manual_dir`` set.
"""

from __future__ import annotations

from experiments import common
from fbjax.data import encode, hh_rlhf, sources
from fbjax.run import sim_feedback
from fbjax.run.config import ExperimentConfig
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

# All four HH-RLHF subsets: 43,835 + 42,537 + 22,007 + 52,421 training pairs.
HH_TRAIN_PAIRS = 160_800


def hh_all() -> sources.Mixture:
    """Every HH-RLHF subset's training split, as the DPO code's ``datasets=[hh]`` reads it;
    another split is the dataset's ``split`` (``--set data.split=test``), which reaches every
    subset."""
    return sources.Mixture(parts=tuple(sources.HHRLHF(subset=s) for s in hh_rlhf.SUBSETS))


def paper() -> ExperimentConfig:
    return common.paper(
        "dpo_rafailov2023", checkpoint="EleutherAI/pythia-2.8b",
        objective=presets.dpo(beta=0.1),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=150, schedule="constant",
                                  grad_clip=10.0),
        train=common.paper_train(examples=HH_TRAIN_PAIRS, batch=64, completions=2, seq_len=512,
                                 max_prompt_len=256),
        mesh=common.MESH_FSDP,
        # HH prompts in the dataset's own transcript form, as the DPO code feeds them.
        data=sources.Dataset(source=hh_all(), encoder=encode.paired,
                             template=sources.Transcript()),
        evaluation=common.PaperEval(
            benchmark="Anthropic HH test, single-turn prompts",
            metric="GPT-4 win rate against the preferred response",
            expected="about 0.6 at temperature 0.25 (Fig. 3)",
        ),
    )


STAGE = common.method(
    name="DPO", family="paired preference", feedback="pairwise preference",
    objective=presets.dpo(beta=0.1), build=sim_feedback.preference_pairs,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="dpo_rafailov2023")

