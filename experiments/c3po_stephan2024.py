"""C3PO: Stephan, Khazatsky, Mitchell, Chen, Hsu, Sharma, Finn 2024, "RLVF: Learning from Verbal Feedback without
Overgeneralization", arXiv:2402.10893.

Contextualized Critiques with Constrained Preference Optimization: from one piece of high-level
verbal feedback ("don't use emojis in work emails") a model writes in-scope, near-scope and
out-of-scope prompts; in scope the model is trained with DPO towards its own output *revised* to
follow the feedback, and near / out of scope with likelihood of its *original* outputs, so the
feedback does not spill over (``fbjax.objectives.language.c3po``).

* ``paper``: Mistral-7B-Instruct-v0.2 on GPT-4-generated prompt sets per feedback (fbjax has no
  reader: :class:`~fbjax.data.sources.Unavailable`), DPO beta = 0.1 and likelihood weights 0.1
  near scope, 0.2 out of scope (fbjax's defaults, from the released config_lcdpo.json; LoRA r 64,
  lr 5e-5 there; the per-feedback dataset size is unverified). One online round
  (:class:`~fbjax.run.config.OnlineStage`): the original model completes every prompt once; in
  scope its completion is revised to follow the feedback, near and out of scope it is kept
  (``online_records.ScopedRevisions``). The paper's revisions came from GPT-4
  (``paper_provider``); a local judge checkpoint stands in (``--set
  stages.train.provider.reviser.checkpoint=DIR``) and the verbal feedback is ``--set
  stages.train.provider.feedback=...``; without either the run fails before sampling, naming
  the path. The prompt sets (records with ``meta["scope"]`` in / near / out) have no reader.
  The paper tunes LoRA adapters (``--set lora.rank=64``).
* Expected (as recalled): in-scope adherence comparable to in-context feedback with far less
  overgeneralisation to near- and out-of-scope prompts than SFT or DPO alone; no number recorded
  here.
* ``sim``: the verbal feedback is "carry correctly when adding": addition prompts are in scope
  (revised = the oracle's fix of the SFT sample), subtraction prompts near scope (likelihood of
  the SFT sample); the simulator has no unrelated prompts for out of scope.
* Compute (``paper``): 63 steps of 64 padded 1024-token rows per feedback, policy plus
  reference, plus generating the prompts and revisions.

Run::

    fbjax train --experiment experiments/c3po_stephan2024.py --workdir runs/c3po_sim
"""

from __future__ import annotations

from experiments import common
from fbjax import sampling
from fbjax.data import sources
from fbjax.feedback import RefinementTemplate
from fbjax.run import online, online_records, sim_feedback
from fbjax.run.config import ExperimentConfig, OnlineStage
from fbjax.train import language_inputs
from fbjax.train.optim import OptimizerConfig

VARIANTS = common.VARIANTS
DEFAULT_VARIANT = common.DEFAULT_VARIANT

PROMPTS_PER_FEEDBACK = 2_000


def paper() -> ExperimentConfig:
    stage = OnlineStage(
        name="train",
        data=sources.Dataset(
            source=sources.Unavailable(name="C3PO prompt sets generated per feedback by GPT-4",
                                       reason="generated data; no fbjax reader"),
            template=sources.Chat(common.MISTRAL_INST)),
        prompts=online.DatasetPrompts(num_prompts=PROMPTS_PER_FEEDBACK),
        provider=online_records.ScopedRevisions(
            reviser=common.judge(RefinementTemplate(), "GPT-4 revisions following the "
                                 "feedback")),
        paper_provider="GPT-4 revisions of the original model's in-scope completions",
        encode=online_records.c3po_online_groups,
        objective=language_inputs.c3po(beta=0.1, near_scope_weight=0.2, out_of_scope_weight=0.2),
        rounds=1,
        samples_per_prompt=1,
        sampling=sampling.SamplingConfig(max_new_tokens=512, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=5e-5, warmup_steps=5, schedule="linear"),
        train=common.paper_train(examples=PROMPTS_PER_FEEDBACK, batch=32, completions=2,
                                 seq_len=1024, max_prompt_len=512),
        family="language feedback", feedback="one verbal rule with scope",
    )
    return common.online_paper(
        "c3po_stephan2024", checkpoint="mistralai/Mistral-7B-Instruct-v0.2", stages=(stage,),
        mesh=common.MESH_FSDP_TP4,
        evaluation=common.PaperEval(benchmark="C3PO feedback suite",
                                    metric="feedback adherence in scope; overgeneralisation "
                                           "near / out of scope (GPT-4 judged)"),
    )


STAGE = common.method(
    name="C3PO", family="language feedback", feedback="one verbal rule with scope",
    objective=language_inputs.c3po(), build=sim_feedback.scoped_feedback,
    train=common.SIM_TRAIN, optimizer=common.SIM_OPTIMIZER,
)


get_config = common.variants(paper, STAGE, name="c3po_stephan2024")
