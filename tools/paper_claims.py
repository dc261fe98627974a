"""Papers' qualitative claims reproduced in the simulator: for each claim a treatment and a
control trained from the same SFT start on feedback from the same sample pool, one number per
seed for each, and a rule, written here per claim, that says whether the claim holds.

    python tools/paper_claims.py --seeds 0 1 2 --markdown      # ~13 min per seed on 2 cores
    python tools/paper_claims.py --from-json docs/results/paper_claims.json
    python tools/paper_claims.py --smoke                        # every stage, shrunk: minutes

The treatment and control stages reuse the paper modules' ``sim`` stages
(``experiments/<method>_<author><year>.py``) with ``dataclasses.replace``: same objective,
hyperparameters and step counts, only the data, one hyperparameter or the evaluation changed as
the claim needs. All stages of one seed form ONE simulator experiment (one SFT start and one
sample pool, ``common.sim_experiment``), so a treatment and its control differ only where the
claim says. Seeds run one after another; the rows are written after every seed, and a run that
is stopped continues where it was when started again with the same ``--workdir`` (every stage
resumes from its checkpoints, finished evaluations are read back).

The metric is the task oracle's mean reward on 512 held-out prompts after training (the
evaluation stage's ``reward_after``) unless the claim says otherwise. ``holds`` compares the
means over seeds; the note says on how many seeds the treatment was ahead and the spread of the
paired difference, so an effect within seed noise is visible as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
import zlib
from typing import Callable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from experiments import (  # noqa: E402
    c3po_stephan2024 as c3po,
    cdpo_mitchell2023 as cdpo,
    coh_liu2023 as coh,
    common,
    conditional_korbak2023 as conditional,
    cut_xu2023 as cut,
    dpo_rafailov2023 as dpo,
    ilf_scheurer2023 as ilf,
    kto_ethayarajh2024 as kto,
    leti_wang2023 as leti,
    rdpo_chowdhury2024 as rdpo,
)
from fbjax import sim as simlib  # noqa: E402
from fbjax.data import conversions, encode, language, templates  # noqa: E402
from fbjax.data import examples as ex  # noqa: E402
from fbjax.run import sim, sim_feedback  # noqa: E402
from fbjax.run.config import ExperimentConfig, StageEval, TrainStage  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "docs", "results", "paper_claims.json")

# ============================================================================ claim data
# Builders ``(task, pool, tokenizer, rng) -> groups`` and evaluations are frozen dataclasses, not
# closures or partials: a stage's config is recorded by value (fields), so a rerun finds its
# checkpoints under the same config and resumes instead of refusing them.


def pool_rng(pool: sim.SamplePool) -> np.random.Generator:
    """A generator seeded by the pool's content (so by the run's seed), not by a stage's name:
    stages that draw from it get the same draws."""
    return np.random.default_rng(zlib.crc32(json.dumps([pool.prompts, pool.texts]).encode()))


@dataclasses.dataclass(frozen=True)
class SharedPairs:
    """``sim_feedback.preference_pairs``'s data (Bradley-Terry preferences between samples
    (0, 1), (2, 3) of each prompt, temperature 0.05, labels flipped with ``flip_rate``) with the
    annotator's draws from :func:`pool_rng` instead of the stage's generator: a method and its
    DPO control train on the very same labels, and the pairs flipped at 20% are among those
    flipped at 40% (one uniform draw per pair decides the flip, ``u < flip_rate``)."""

    flip_rate: float = 0.0

    def examples(self, task, pool: sim.SamplePool) -> list[ex.PairedExample]:
        prompts, a, b = sim_feedback.disjoint_pairs(pool)
        return simlib.feedback.preferences(task, prompts, a, b, pool_rng(pool), temperature=0.05,
                                           flip_rate=self.flip_rate)

    def __call__(self, task, pool, tokenizer, rng):
        del rng
        return encode.paired(self.examples(task, pool), tokenizer)


@dataclasses.dataclass(frozen=True)
class ThumbsFromPairs:
    """The KTO paper's data-imbalance experiment (Ethayarajh et al. 2024, arXiv:2402.01306):
    its pairs split into thumbs (chosen desirable, rejected undesirable;
    ``conversions.pairs_to_binary``) and ``1 - keep_desirable`` of the desirable examples
    dropped, here from the same pairs the DPO control trains on (:class:`SharedPairs`). The
    class weights come from the stage's ``adapt`` (``sim_feedback.kto_balance``:
    ``lambda_D n_D / (lambda_U n_U) = 1``, inside the paper's advised [1, 4/3])."""

    keep_desirable: float = 0.1

    def examples(self, task, pool, rng: np.random.Generator) -> list[ex.BinaryExample]:
        thumbs = conversions.pairs_to_binary(SharedPairs().examples(task, pool))
        up = [e for e in thumbs if e.label]
        down = [e for e in thumbs if not e.label]
        keep = rng.choice(len(up), size=max(1, round(self.keep_desirable * len(up))),
                          replace=False)
        kept = [up[i] for i in sorted(keep.tolist())] + down
        # Shuffled so KTO's mismatched completion (the next example's, ``encode.unpaired``) is
        # mostly another prompt's, not the same pair's other half.
        return [kept[i] for i in rng.permutation(len(kept)).tolist()]

    def __call__(self, task, pool, tokenizer, rng):
        return encode.unpaired(self.examples(task, pool, rng), tokenizer)


def in_scope_examples(task, pool, in_scope=sim_feedback.is_addition) -> list[ex.PairedExample]:
    """C3PO's in-scope pairs exactly as ``sim_feedback.scoped_feedback`` builds them (the oracle's
    revision of the first sample over the sample), without its near-scope likelihood data."""
    out = []
    for p, texts in zip(pool.prompts, pool.texts):
        fixed = task.refine(p, texts[0])
        if in_scope(p) and fixed != texts[0]:
            out.append(ex.PairedExample(ex.user_prompt(p), fixed, texts[0]))
    return out


def in_scope_pairs(task, pool, tokenizer, rng):
    """DPO on C3PO's in-scope pairs alone: the baseline C3PO is built to beat on spill-over."""
    del rng
    return encode.paired(in_scope_examples(task, pool), tokenizer)


def reward_token_only_examples(task, pool) -> list[ex.FeedbackExample]:
    """LeTI's critiques with the text removed: what is left is the binary reward token."""
    return [dataclasses.replace(e, feedback="") for e in sim_feedback.critiques(task, pool)]


def leti_reward_token_only(task, pool, tokenizer, rng, *, train_on_context: bool = True):
    """LeTI's sequences without the textual feedback (``<|bad|>`` or ``<|good|>``, problem,
    solution): the paper's ablation that fine-tunes with the binary reward alone."""
    del rng
    return language.leti_groups(reward_token_only_examples(task, pool), tokenizer,
                                train_on_context=train_on_context)


def with_pretraining(build):
    """The LeTI module's sim data builder with ``build`` in place of its LeTI sequences: the
    same pretraining mix (demonstrations, ratio and field) as the module's stage."""
    mix = leti.STAGE.data.build
    return functools.partial(mix.func, *mix.args, **{**mix.keywords, "build": build})


def initial_output_pairs(task, pool) -> list[tuple[str, str]]:
    """ILF's control: (input, the pool's own sample) for exactly the inputs whose refinements ILF
    fine-tunes on (``sim_feedback.refinement_sft``)."""
    records = simlib.feedback.refinements(task, pool.flat_prompts, pool.flat_texts)
    return [(language.prompt_text(r.prompt), r.completion) for r in records]


def ilf_initial_outputs(task, pool, tokenizer, rng):
    del rng
    return language.ilf_groups(initial_output_pairs(task, pool), tokenizer)


# ============================================================================ evaluations


@dataclasses.dataclass(frozen=True)
class ControlToken:
    """Korbak et al.'s generation prompt: the control token before the prompt."""

    token: str

    def __call__(self, prompt: str) -> str:
        return templates.conditional_prompt(prompt, self.token)


@dataclasses.dataclass(frozen=True)
class HindsightPhrase:
    """Chain of Hindsight's generation prompt under one feedback phrase."""

    phrase: str

    def __call__(self, prompt: str) -> str:
        return templates.chain_of_hindsight_prompt(prompt, self.phrase)


def _on_task(ctx: sim.EvalContext, params, model, **kwargs):
    """``evaluation.evaluate_on_task`` with the evaluation stage's prompts, key and sampling, so
    the SFT samples drawn here are the ones the stage's baseline drew."""
    from fbjax import evaluation

    return evaluation.evaluate_on_task(ctx.task, params, model, ctx.tokenizer, ctx.prompts,
                                       rng=ctx.rng, sampling_config=ctx.sampling, **kwargs)


@dataclasses.dataclass(frozen=True)
class PromptContrast:
    """One trained model sampled under two generation prompts: the stage's usual metrics under
    ``treatment`` (against the SFT start prompted plainly, as the default evaluation), plus
    ``reward_control_prompt`` under ``control`` and ``reward_before_same_prompt`` (the SFT start
    under ``treatment``)."""

    treatment: Callable[[str], str]
    control: Callable[[str], str]

    def __call__(self, ctx: sim.EvalContext) -> dict[str, float]:
        _, base_samples = _on_task(ctx, ctx.sft_params, ctx.sft_model)
        metrics, _ = _on_task(ctx, ctx.params, ctx.model, ref_params=ctx.sft_params,
                              baseline=base_samples, prompt_transform=self.treatment)
        control, _ = _on_task(ctx, ctx.params, ctx.model, prompt_transform=self.control)
        same, _ = _on_task(ctx, ctx.sft_params, ctx.sft_model, prompt_transform=self.treatment)
        return {**metrics, "reward_control_prompt": control["reward"],
                "reward_before_same_prompt": same["reward"]}


def scope_rewards(task, prompts: Sequence[str], before: Sequence[str], after: Sequence[str],
                  in_scope: Callable[[str], bool]) -> dict[str, float]:
    """Mean oracle reward before and after, on the prompts in scope and on the others."""
    scope = np.array([in_scope(p) for p in prompts])
    out = {}
    for name, texts in (("before", before), ("after", after)):
        r = np.array([task.reward(p, t) for p, t in zip(prompts, texts)])
        out[f"reward_in_scope_{name}"] = float(r[scope].mean()) if scope.any() else float("nan")
        out[f"reward_out_of_scope_{name}"] = (float(r[~scope].mean()) if (~scope).any()
                                              else float("nan"))
    return out


@dataclasses.dataclass(frozen=True)
class ScopedEval:
    """The default evaluation plus the reward before / after on in-scope (addition) and
    out-of-scope (subtraction) held-out prompts: C3PO's question is where a change lands."""

    in_scope: Callable[[str], bool] = sim_feedback.is_addition

    def __call__(self, ctx: sim.EvalContext) -> dict[str, float]:
        _, base_samples = _on_task(ctx, ctx.sft_params, ctx.sft_model)
        metrics, samples = _on_task(ctx, ctx.params, ctx.model, ref_params=ctx.sft_params,
                                    baseline=base_samples)
        return {**metrics, **scope_rewards(ctx.task, ctx.prompts, base_samples.texts,
                                           samples.texts, self.in_scope)}


# ============================================================================ stages


def _stage(base: TrainStage, name: str, *, build=None, hparams: Mapping | None = None,
           evaluate=None, **changes) -> TrainStage:
    """A module's sim stage under a new name (which also seeds its data), with another feedback
    builder, objective hyperparameters or evaluation; steps, optimizer and the rest unchanged."""
    if build is not None:
        changes["data"] = sim.Feedback(build=build)
    if hparams is not None:
        changes["objective"] = dataclasses.replace(
            base.objective, hparams={**base.objective.hparams, **hparams})
    if evaluate is not None:
        changes["evaluation"] = StageEval(evaluate=evaluate)
    return dataclasses.replace(base, name=name, **changes)


def flipped(base: TrainStage, method: str, rate: float, *, told: bool) -> TrainStage:
    """``base`` on :class:`SharedPairs` with ``rate`` of the labels flipped; ``told``: epsilon
    (``label_smoothing``) set to the true rate, as Chowdhury et al. do for rDPO and cDPO."""
    return _stage(base, f"claim_{method}_flip{round(100 * rate)}", build=SharedPairs(rate),
                  hparams={"label_smoothing": rate} if told else None)


SCOPED = ScopedEval()
STAGES: tuple[TrainStage, ...] = (
    _stage(c3po.STAGE, "claim_c3po", evaluate=SCOPED),
    _stage(dpo.STAGE, "claim_dpo_in_scope", build=in_scope_pairs, evaluate=SCOPED,
           train=c3po.STAGE.train, optimizer=c3po.STAGE.optimizer),
    _stage(leti.STAGE, "claim_leti"),
    _stage(leti.STAGE, "claim_leti_reward_token_only",
           build=with_pretraining(leti_reward_token_only)),
    _stage(cut.STAGE, "claim_cut"),
    # alpha = 0: the flagged tokens get no loss; every other token keeps its likelihood under
    # both prompts, so the only change is CUT's unlikelihood term.
    _stage(cut.STAGE, "claim_cut_no_unlikelihood", hparams={"unlikelihood_weight": 0.0}),
    _stage(ilf.STAGE, "claim_ilf"),
    _stage(ilf.STAGE, "claim_ilf_initial_outputs", build=ilf_initial_outputs),
    _stage(conditional.STAGE, "claim_conditional",
           evaluate=PromptContrast(ControlToken(templates.GOOD_TOKEN),
                                   ControlToken(templates.BAD_TOKEN))),
    _stage(dpo.STAGE, "claim_dpo", build=SharedPairs(0.0)),
    *(flipped(dpo.STAGE, "dpo", r, told=False) for r in (0.2, 0.4)),
    *(flipped(rdpo.STAGE, "rdpo", r, told=True) for r in (0.2, 0.4)),
    *(flipped(cdpo.STAGE, "cdpo", r, told=True) for r in (0.2, 0.4)),
    _stage(kto.STAGE, "claim_kto_imbalanced", build=ThumbsFromPairs(keep_desirable=0.1)),
    _stage(kto.STAGE, "claim_kto_balanced", build=ThumbsFromPairs(keep_desirable=1.0)),
    _stage(coh.STAGE, "claim_coh",
           evaluate=PromptContrast(HindsightPhrase(templates.COH_POSITIVE[0]),
                                   HindsightPhrase(templates.COH_NEGATIVE[0]))),
)


def _longer(stage: TrainStage, factor: int) -> TrainStage:
    return _stage(stage, f"diag_{stage.name.removeprefix('claim_')}_x{factor}_steps",
                  train=dataclasses.replace(stage.train, steps=factor * stage.train.steps))


_BY_NAME = {s.name: s for s in STAGES}
# Checks of why a claim failed, not part of the table (``--diagnostics``; docs/experiments.md):
# - LeTI's critique sequences are ~4x longer than the reward-token-only ones (37 vs 10 tokens on
#   average), so at the same steps the packed rows hold ~4x fewer examples: LeTI trained 4x as
#   long sees as many examples as its control did (and the control trained 4x as long too, for
#   the same steps).
# - rDPO / cDPO differ from DPO only once the margins grow: after the sim stages' 40 steps the
#   mean beta * h is 0.06 on clean pairs and 0.006 at 40% flips (seed 0), where sigmoid(beta h)
#   ~ 1/2 and the three losses' gradients are proportional. 8x the steps, ~9 passes over the
#   pairs, lets DPO fit the flipped labels.
# - With the loss on the answers alone (``train_on_context=False``, no pretraining mix), the
#   critique text is context only: whether LeTI's claim holds once it no longer dilutes the
#   answers' share of the gradient (7% of the trained tokens with the paper's loss, seed 0).
DIAGNOSTICS: tuple[TrainStage, ...] = (
    _longer(_BY_NAME["claim_leti"], 4),
    _longer(_BY_NAME["claim_leti_reward_token_only"], 4),
    _stage(leti.STAGE, "diag_leti_answers_only",
           build=functools.partial(sim_feedback.leti_sequences, train_on_context=False)),
    _stage(leti.STAGE, "diag_leti_reward_token_only_answers_only",
           build=functools.partial(leti_reward_token_only, train_on_context=False)),
    *(_longer(_BY_NAME[f"claim_{m}_flip40"], 8) for m in ("dpo", "rdpo", "cdpo")),
)


def selected_diagnostics(names: Sequence[str] | None) -> tuple[TrainStage, ...]:
    if names is None:
        return ()
    known = {stage.name: stage for stage in DIAGNOSTICS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"--diagnostics: unknown stage(s) {unknown}; choose from {sorted(known)}")
    return tuple(known[n] for n in names) if names else DIAGNOSTICS


def experiment(seed: int, *, smoke: bool = False,
               diagnostics: Sequence[str] | None = None) -> ExperimentConfig:
    """Every claim's stages in one simulator experiment: one SFT start and pool for all; with
    ``diagnostics`` also those DIAGNOSTICS stages (``[]``: all of them)."""
    extra = selected_diagnostics(diagnostics)
    config = common.sim_experiment("paper_claims", *STAGES, *extra, seed=seed)
    return common.smoke(config) if smoke else config


# ============================================================================ claims


@dataclasses.dataclass(frozen=True)
class Measure:
    """One number per seed: ``key`` of stage ``stage``'s evaluation row, minus ``minus``."""

    stage: str
    key: str = "reward_after"
    minus: str | None = None

    def read(self, rows: Mapping[str, Mapping[str, float]]) -> float:
        row = rows[self.stage]
        return float(row[self.key]) - (float(row[self.minus]) if self.minus else 0.0)


def _mean(xs: Sequence[float]) -> float:
    return statistics.mean(xs)


def beats(t: Sequence[float], c: Sequence[float], **_) -> bool:
    """The treatment's mean is above the control's."""
    return _mean(t) > _mean(c)


# About one standard error of one seed's 512-prompt evaluation of the oracle reward.
MATCH_TOLERANCE = 0.02


def matches_or_beats(t: Sequence[float], c: Sequence[float], **_) -> bool:
    """The treatment's mean is at least the control's minus :data:`MATCH_TOLERANCE`."""
    return _mean(t) >= _mean(c) - MATCH_TOLERANCE


def contained(t: Sequence[float], c: Sequence[float], *, t_also: Sequence[float],
              c_also: Sequence[float]) -> bool:
    """C3PO's claim: its out-of-scope change (``t``) is smaller in magnitude than the control's
    (``c``), while its in-scope change (``t_also``) is positive."""
    del c_also
    return abs(_mean(t)) < abs(_mean(c)) and _mean(t_also) > 0


RULES: dict[str, Callable[..., bool]] = {
    "beats": beats, "matches_or_beats": matches_or_beats, "contained": contained}
RULE_TEXT = {
    "beats": "mean treatment > mean control",
    "matches_or_beats": f"mean treatment >= mean control - {MATCH_TOLERANCE}",
    "contained": "|mean out-of-scope change| below the control's, and in-scope change > 0",
}


@dataclasses.dataclass(frozen=True)
class Also:
    """A second metric a rule reads (C3PO: the in-scope change next to the out-of-scope one)."""

    metric: str
    treatment: Measure
    control: Measure


@dataclasses.dataclass(frozen=True)
class Claim:
    """One paper's qualitative claim as a treatment against a control on one metric."""

    key: str
    claim: str
    paper: str
    metric: str
    treatment_name: str
    control_name: str
    treatment: Measure
    control: Measure
    rule: str = "beats"
    also: Also | None = None
    note: str = ""  # what the construction or the numbers need said (written after the run)


REWARD = "oracle reward after training (512 held-out prompts)"
RDPO_PAPER = "Chowdhury et al. 2024, arXiv:2403.00409 / Rafailov et al. 2023"
CDPO_PAPER = "Mitchell 2023 (cDPO note) / Chowdhury et al. 2024 / Rafailov et al. 2023"


# The notes below were written from the 3-seed run in docs/results/paper_claims.json (SFT starts
# .486 / .475 / .475). A rerun recomputes the per-seed evidence each row's note starts with, not
# these.

# Why the noisy-label claims cannot show at the sim stages' budget. Per pair, the gradient weight
# on the margin z = beta h is 1 - sigmoid(z) for DPO, (1 - eps) / (1 - 2 eps) - sigmoid(z) for
# rDPO and (1 - eps) - sigmoid(z) for cDPO: at z = 0 the same direction scaled by 1, 1 / (1 - 2
# eps) and 1 - 2 eps, which Adam normalises away.
NOISY_NOTE = (
    "At the sim stages' 40 steps (~1.1 passes over the pairs) the beta-margins stay near 0, "
    "where rDPO's and cDPO's gradients are DPO's scaled by 1 / (1 - 2 eps) and 1 - 2 eps and "
    "Adam removes the scale, and the flips hurt DPO little (at 76ac228: 0.511 clean, 0.520 at "
    "20%, 0.499 at 40%, seed means; rDPO trailed DPO on every seed at both rates). cDPO stays "
    "nearest the start, which is most of its lead. At an "
    "earlier revision, seed 0, 40% flips, 8x the steps (--diagnostics): DPO 0.500, rDPO 0.432, "
    "cDPO 0.537 (docs/experiments.md)")


def _noisy(method: str, name: str, paper: str, rate: int, note: str = NOISY_NOTE) -> Claim:
    return Claim(
        key=f"{method}_flip{rate}",
        claim=f"{name} handles flipped labels better than DPO ({rate}% flipped)",
        paper=paper, metric=REWARD,
        treatment_name=f"{name}, epsilon = {rate / 100}", control_name="DPO",
        treatment=Measure(f"claim_{method}_flip{rate}"), control=Measure(f"claim_dpo_flip{rate}"),
        note=note)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        key="c3po",
        claim="C3PO applies feedback in scope without spilling over out of scope",
        paper="Stephan et al. 2024, arXiv:2402.10893",
        metric="out-of-scope (subtraction) reward change vs SFT start",
        treatment_name="C3PO", control_name="DPO on the in-scope pairs alone",
        treatment=Measure("claim_c3po", "reward_out_of_scope_after", "reward_out_of_scope_before"),
        control=Measure("claim_dpo_in_scope", "reward_out_of_scope_after",
                        "reward_out_of_scope_before"),
        rule="contained",
        also=Also("in-scope (addition) reward change vs SFT start",
                  Measure("claim_c3po", "reward_in_scope_after", "reward_in_scope_before"),
                  Measure("claim_dpo_in_scope", "reward_in_scope_after",
                          "reward_in_scope_before")),
        note="DPO on the in-scope pairs alone pulls subtraction down; C3PO's likelihood of "
             "the SFT samples near scope holds it (at 76ac228, on seed 2, C3PO's out-of-scope "
             "change, upwards, was nearly as large as DPO's downwards)",
    ),
    Claim(
        key="leti", claim="LeTI's textual feedback helps beyond the reward token",
        paper="Wang et al. 2023, arXiv:2305.10314", metric=REWARD + ", sampled after <|good|>",
        treatment_name="reward token + critique", control_name="reward token alone",
        treatment=Measure("claim_leti"), control=Measure("claim_leti_reward_token_only"),
        note="Does not hold. Both arms mix pretraining text (demonstrations) 1:1 as the module "
             "does, and LeTI trains every token after the reward token: the critiques make "
             "the answers, which the evaluation samples, a small share of the trained tokens "
             "(7% on the seed-0 pool, experiments/leti_wang2023.py). With the loss on the "
             "answers alone and no pretraining mix (--diagnostics diag_leti_answers_only "
             "diag_leti_reward_token_only_answers_only; at 6ac001d) both arms gain, and the "
             "critique does not separate from the reward token beyond seed noise: 0.680 / "
             "0.605 / 0.601 against 0.584 / 0.635 / 0.658, ahead on 1/3 seeds, paired "
             "difference +0.003 +- 0.082 (at 76ac228: ahead on 2/3, +0.066 +- 0.134): on this "
             "task 3 seeds cannot tell the critique's signal from the reward token's",
    ),
    Claim(
        key="cut", claim="CUT's unlikelihood on blamed tokens helps",
        paper="Xu et al. 2023, arXiv:2312.14591", metric=REWARD,
        treatment_name="CUT", control_name="CUT without unlikelihood (alpha = 0)",
        treatment=Measure("claim_cut"), control=Measure("claim_cut_no_unlikelihood"),
        note="Within seed noise either way: at 76ac228 the control was ahead (0.551 against "
             "0.521, 0/3 seeds), at 7f8c770 the treatment (0.542 against 0.536), from the same "
             "seeds with gradients that differ only in rounding. Both arms gain over the SFT "
             "start; the gain comes with the likelihood of the judged copy and the positives, "
             "which both share. Unlikelihood on a wrong digit spreads its mass over every other "
             "digit, not onto the right one, so it has little to add on this task",
    ),
    Claim(
        key="ilf", claim="ILF: fine-tuning on refinements beats fine-tuning on the initial outputs",
        paper="Scheurer et al. 2023, arXiv:2303.16755", metric=REWARD,
        treatment_name="refinements", control_name="initial outputs",
        treatment=Measure("claim_ilf"), control=Measure("claim_ilf_initial_outputs"),
        note="The simulator's refiner is the oracle (every refinement is the right answer), "
             "so this is ILF's best case",
    ),
    Claim(
        key="conditional",
        claim="Conditional training: <|good|> steers generation towards good outputs",
        paper="Korbak et al. 2023, arXiv:2302.08582",
        metric="oracle reward of one trained model under each control token",
        treatment_name="<|good|>", control_name="<|bad|>",
        treatment=Measure("claim_conditional"),
        control=Measure("claim_conditional", "reward_control_prompt"),
    ),
    _noisy("rdpo", "rDPO", RDPO_PAPER, 20),
    _noisy("rdpo", "rDPO", RDPO_PAPER, 40),
    _noisy("cdpo", "cDPO", CDPO_PAPER, 20,
           note="Small; at this budget cDPO's smaller weights mostly keep it closer to the "
                "start. " + NOISY_NOTE),
    _noisy("cdpo", "cDPO", CDPO_PAPER, 40,
           note="Within seed noise (a tie, 0.500 and 0.499, at 76ac228). " + NOISY_NOTE),
    Claim(
        key="kto_imbalance",
        claim="KTO with 90% of desirable examples dropped (1:10) matches or beats DPO",
        paper="Ethayarajh et al. 2024, arXiv:2402.01306", metric=REWARD,
        treatment_name="KTO, 1:10, lambda_D n_D / (lambda_U n_U) = 1",
        control_name="DPO on all pairs",
        treatment=Measure("claim_kto_imbalanced"), control=Measure("claim_dpo"),
        rule="matches_or_beats",
        note="At the edge of the tolerance: within it at 76ac228, 0.022 below DPO at 7f8c770 "
             "(just past the 0.02 rule). At the module's sim setting (lr 1e-5) KTO barely moves "
             "(KL 0.04-0.05 at 7f8c770), and DPO's own spread across seeds is wider than the gap",
    ),
    Claim(
        key="kto_imbalance_vs_balanced",
        claim="KTO with 90% of desirable examples dropped (1:10) matches KTO on all of them (1:1)",
        paper="Ethayarajh et al. 2024, arXiv:2402.01306", metric=REWARD,
        treatment_name="KTO, 1:10", control_name="KTO, 1:1 (the same pairs as thumbs)",
        treatment=Measure("claim_kto_imbalanced"), control=Measure("claim_kto_balanced"),
        rule="matches_or_beats",
    ),
    Claim(
        key="coh", claim="Chain of Hindsight: the feedback phrase steers generation",
        paper="Liu et al. 2023, arXiv:2302.02676",
        metric="oracle reward of one trained model under each phrase",
        treatment_name=f'"{templates.COH_POSITIVE[0]}"',
        control_name=f'"{templates.COH_NEGATIVE[0]}"',
        treatment=Measure("claim_coh"), control=Measure("claim_coh", "reward_control_prompt"),
    ),
)


def holds(claim: Claim, t: Sequence[float], c: Sequence[float],
          also: tuple[Sequence[float], Sequence[float]] | None = None) -> bool:
    rule = RULES[claim.rule]
    if claim.rule == "contained":
        return rule(t, c, t_also=also[0], c_also=also[1])
    return rule(t, c)


def _sd(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def evidence(claim: Claim, t: Sequence[float], c: Sequence[float],
             also: tuple[Sequence[float], Sequence[float]] | None = None) -> str:
    """Per-seed agreement and the paired difference's spread, so noise shows."""
    n = len(t)
    if claim.rule == "contained":
        smaller = sum(abs(a) < abs(b) for a, b in zip(t, c))
        return (f"|out-of-scope change| smaller on {smaller}/{n} seeds; in-scope change "
                f"{_mean(also[0]):+.3f} +- {_sd(also[0]):.3f} (control "
                f"{_mean(also[1]):+.3f} +- {_sd(also[1]):.3f})")
    diff = [a - b for a, b in zip(t, c)]
    ahead = sum(d > 0 for d in diff)
    return (f"treatment ahead on {ahead}/{n} seeds; paired difference "
            f"{_mean(diff):+.3f} +- {_sd(diff):.3f}")


def rows_for(claims: Sequence[Claim], by_seed: Mapping[int, Mapping[str, Mapping]]) -> list[dict]:
    """The table's rows from each seed's evaluation rows (``{seed: {stage: row}}``)."""
    seeds = sorted(by_seed)
    out = []
    for claim in claims:
        t = [claim.treatment.read(by_seed[s]) for s in seeds]
        c = [claim.control.read(by_seed[s]) for s in seeds]
        also = None
        if claim.also is not None:
            also = ([claim.also.treatment.read(by_seed[s]) for s in seeds],
                    [claim.also.control.read(by_seed[s]) for s in seeds])
        note = evidence(claim, t, c, also) + (f". {claim.note}" if claim.note else "")
        row = {
            "key": claim.key, "claim": claim.claim, "paper": claim.paper,
            "metric": claim.metric, "treatment_name": claim.treatment_name,
            "control_name": claim.control_name, "treatment": t, "control": c,
            "holds": bool(holds(claim, t, c, also)), "rule": RULE_TEXT[claim.rule],
            "note": note, "seeds": seeds,
            "sft_reward": [float(by_seed[s][claim.treatment.stage]["reward_before"])
                           for s in seeds],
        }
        if also is not None:
            row["also"] = {"metric": claim.also.metric, "treatment": also[0],
                           "control": also[1]}
        out.append(row)
    return out


def _cell(xs: Sequence[float], *, signed: bool) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    spread = f" +- {_sd(xs):.3f}" if len(xs) > 1 else ""
    return fmt.format(_mean(xs)) + spread


def _md(text: str) -> str:
    """A table cell: ``|`` (as in ``<|good|>``) would end the cell."""
    return text.replace("|", "\\|")


def markdown(rows: Sequence[Mapping], *, short: bool = False) -> str:
    """The rows as a markdown table; ``short`` leaves out the paper, metric and note."""
    if short:
        lines = ["| claim | treatment | control | holds |", "|---|---|---|---|"]
    else:
        lines = ["| claim | metric | treatment mean +- sd | control mean +- sd | holds | note |",
                 "|---|---|---|---|---|---|"]
    for r in rows:
        signed = "change" in r["metric"]  # a change is signed, a reward is not
        t = f"{r['treatment_name']}: {_cell(r['treatment'], signed=signed)}"
        c = f"{r['control_name']}: {_cell(r['control'], signed=signed)}"
        yes = "yes" if r["holds"] else "**no**"
        if short:
            cells = [r["claim"], t, c]
        else:
            cells = [f"{r['claim']} ({r['paper']})", r["metric"], t, c]
        lines.append("| " + " | ".join(map(_md, cells)) + f" | {yes} |"
                     + ("" if short else f" {_md(r['note'])} |"))
    seeds = sorted({s for r in rows for s in r.get("seeds", [])})
    return "\n".join(lines) + (f"\n\nSeeds {', '.join(map(str, seeds))}; +- is the sd across "
                               "seeds (ddof=1)." if seeds else "")


# ============================================================================ running


def run_seed(seed: int, workdir: str, *, smoke: bool = False,
             diagnostics: Sequence[str] | None = None) -> dict[str, dict]:
    """One seed's experiment (resumed where an earlier run left it): ``{stage: eval row}``."""
    from fbjax.run import stages

    summary = stages.run(experiment(seed, smoke=smoke, diagnostics=diagnostics),
                         workdir=os.path.join(workdir, f"seed{seed}"), progress=False)
    return {row["method"]: row for row in summary["methods"]}


def write_rows(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)  # whole or not at all


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (smoke: 0)")
    p.add_argument("--workdir", default=None,
                   help="default runs/paper_claims (smoke: runs/paper_claims_smoke)")
    p.add_argument("--out", default=None, help=f"JSON rows (default {DEFAULT_OUT}; smoke: "
                   "<workdir>/paper_claims.json)")
    p.add_argument("--smoke", action="store_true",
                   help="every stage shrunk by experiments.common.smoke: a quick check")
    p.add_argument("--markdown", action="store_true", help="print the rows as a markdown table")
    p.add_argument("--short", action="store_true", help="with --markdown: the README's columns")
    p.add_argument("--from-json", default=None, help="print the table of an earlier --out")
    p.add_argument("--diagnostics", nargs="*", default=None, metavar="STAGE",
                   help="also train these DIAGNOSTICS stages (none named: all) and print "
                        "their oracle rewards")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f), short=args.short))
        return 0
    seeds = args.seeds if args.seeds is not None else ([0] if args.smoke else [0, 1, 2])
    workdir = args.workdir or ("runs/paper_claims_smoke" if args.smoke else "runs/paper_claims")
    out = args.out or (os.path.join(workdir, "paper_claims.json") if args.smoke else DEFAULT_OUT)
    by_seed: dict[int, dict] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        by_seed[seed] = run_seed(seed, workdir, smoke=args.smoke, diagnostics=args.diagnostics)
        rows = rows_for(CLAIMS, by_seed)
        write_rows(out, rows)  # after every seed, so a run that is cut off keeps what it measured
        print(f"seed {seed} done, {time.perf_counter() - t0:.0f} s in all; rows in {out}",
              flush=True)
    if args.diagnostics is not None:
        for stage in selected_diagnostics(args.diagnostics):
            print(f"{stage.name}: oracle reward " + ", ".join(
                f"seed {s} {by_seed[s][stage.name]['reward_after']:.3f}" for s in seeds))
    if args.markdown:
        print(markdown(rows, short=args.short))
    else:
        for r in rows:
            print(f"{'holds' if r['holds'] else 'DOES NOT HOLD'}: {r['claim']} ({r['note']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
