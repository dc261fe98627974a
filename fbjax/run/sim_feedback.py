"""Builders of each method's feedback from a pool of the policy's own samples, graded by the
simulated task's oracle: ``(task, pool, tokenizer, rng) -> token groups``
(:class:`fbjax.run.sim.Feedback`), plus the data-dependent hyperparameters (``adapt``) and the
evaluation prompts some methods sample under."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable

import numpy as np

from fbjax import sim
from fbjax.data import encode, language, listwise, templates
from fbjax.data import examples as ex
from fbjax.data.packing import Group
from fbjax.feedback.judge import CritiqueTemplate, RefinementTemplate, judge_sft_pairs
from fbjax.objectives import binary
from fbjax.train.objective import Objective

TASK = sim.ArithmeticTask(max_operand=19)

def dpo_data(task, pool, tokenizer, rng):
    pairs = sim.feedback.preferences(
        task, list(pool.prompts), [t[0] for t in pool.texts], [t[1] for t in pool.texts], rng,
        temperature=0.05,
    )
    return encode.paired(pairs, tokenizer)


def kto_data(task, pool, tokenizer, rng):
    del rng
    return encode.unpaired(
        sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0), tokenizer
    )


def d2o_data(task, pool, tokenizer, rng):
    """Each bad sample (the negative) with another sample of the same prompt from the SFT
    policy, unlabelled: D2O's self-generated stand-in for the positive distribution."""
    del rng
    groups = []
    for prompt, texts, rewards in zip(pool.prompts, pool.texts, pool.rewards):
        for k, (text, reward) in enumerate(zip(texts, rewards)):
            if reward < 1.0:
                other = texts[(k + 1) % len(texts)]
                groups.append(Group(
                    encode.prompt_ids(tokenizer, prompt),
                    (encode.completion_ids(tokenizer, text), encode.completion_ids(tokenizer, other)),
                ))
    return groups


def ilf_data(task, pool, tokenizer, rng):
    """ILF's last step: fine-tune on the refinements of the outputs that got critiques.

    The simulator's refiner reads the critique and rewrites the output (``task.refine``); ILF's
    selection step keeps the refinement that best addresses the feedback, which for a
    programmatic refiner is the one refinement it returns.
    """
    del rng
    refinements = sim.feedback.refinements(task, pool.flat_prompts, pool.flat_texts)
    pairs = [(encode.default_prompt_text(e.prompt), e.refinement) for e in refinements
             if e.score is not None and e.score < 1.0 and e.refinement]
    return encode.sft(pairs, tokenizer)


def npo_data(task, pool, tokenizer, rng):
    del rng
    return encode.negative(
        sim.feedback.negatives(task, pool.flat_prompts, pool.flat_texts, threshold=1.0), tokenizer
    )


def with_demonstrations(task, pool, tokenizer, rng, *, build: Callable[..., list], field: str,
                        ratio: float = 1.0, quality: float = 0.5):
    """``build``'s groups (slot field ``field = 0``) followed by ``round(ratio * n)`` fresh
    demonstrations from the SFT stage's demonstrator (``quality`` 0.5, as
    ``experiments.common.SFT``; ``field = 1``): the training corpus that NPO+RT keeps as its
    retain set, that unlikelihood training keeps taking likelihood steps on, and that stands in
    for the pretraining text LeTI mixes in 1:1. Bind the
    keywords with ``functools.partial``, which run configs record by function and arguments."""
    groups = build(task, pool, tokenizer, rng)
    count = int(round(ratio * len(groups)))
    corpus = sim.sft_corpus(task, rng, count, quality=quality) if count else ()
    return (language.with_slot_fields(groups, **{field: 0.0})
            + language.with_slot_fields(encode.sft(corpus, tokenizer), **{field: 1.0}))


def kto_balance(objective: Objective, groups: list) -> Objective:
    """KTO's class weights from the data, following the paper's advice that
    ``lambda_D n_D / (lambda_U n_U)`` lie in [1, 4/3] (Ethayarajh et al. 2024, Sec. 4.2)."""
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    n_d, n_u = max(labels.sum(), 1.0), max((1 - labels).sum(), 1.0)
    return dataclasses.replace(
        objective, hparams={**objective.hparams, "desirable_weight": float(n_u / n_d),
                            "undesirable_weight": 1.0})


def coh_eval_prompt(prompt: str) -> str:
    return templates.chain_of_hindsight_prompt(prompt)


def _pool_rows(pool):
    return zip(pool.prompts, pool.texts, np.asarray(pool.rewards))


def disjoint_pairs(pool) -> tuple[list[str], list[str], list[str]]:
    """Each prompt's samples paired (0, 1), (2, 3), ...: ``(prompts, first, second)``."""
    prompts, a, b = [], [], []
    for p, texts in zip(pool.prompts, pool.texts):
        for j in range(0, len(texts) - 1, 2):
            prompts.append(p)
            a.append(texts[j])
            b.append(texts[j + 1])
    return prompts, a, b


def preference_pairs(task, pool, tokenizer, rng, *, flip_rate: float = 0.0,
                     temperature: float = 0.05):
    """Bradley-Terry preferences between disjoint sample pairs (0, 1), (2, 3), ... of each
    prompt; ``flip_rate`` flips labels at random (the noise cDPO / rDPO are built for)."""
    prompts, a, b = disjoint_pairs(pool)
    pairs = sim.feedback.preferences(task, prompts, a, b, rng, temperature=temperature,
                                     flip_rate=flip_rate)
    return encode.paired(pairs, tokenizer)


def thumbs_without_kl(task, pool, tokenizer, rng):
    """Thumbs up iff the oracle reward is 1, without KTO's mismatched completions (PMPO)."""
    del rng
    data = sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0)
    return encode.unpaired(data, tokenizer, kl_offset=None)


def balanced_thumbs(task, pool, tokenizer, rng):
    """Thumbs up iff the oracle reward is 1, with as many thumbs-down as thumbs-up (a random
    subset of the larger class), without KTO's mismatched completions (BCO).

    BCO's loss is a plain mean over both classes (TRL ``BCOTrainer.bco_loss``) and the paper
    trains on binarized preference pairs, one thumbs-up and one thumbs-down per prompt. The SFT
    policy's samples are two thirds wrong: at that mix the pushes down on wrong answers, which
    share most of their digits with right ones, outweigh the pushes up (0.46 -> 0.36)."""
    data = sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0)
    up = [e for e in data if e.label]
    down = [e for e in data if not e.label]
    small, large = sorted((up, down), key=len)
    keep = sorted(rng.choice(len(large), size=len(small), replace=False).tolist())
    return encode.unpaired(small + [large[i] for i in keep], tokenizer, kl_offset=None)


def pmpo_class_means(objective: Objective, groups: list) -> Objective:
    """PMPO's alpha and beta for the data's class mix, so that the batch mean of the per-example
    loss is (up to a constant factor) the paper's objective
    ``-alpha E_accepted[logp] + (1 - alpha) E_rejected[logp] + beta KL``, whose expectations are
    per class; a plain batch mean over a mix with a fraction ``p`` accepted would instead weigh
    accepted and rejected examples ``alpha p : (1 - alpha)(1 - p)``."""
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    p = float(np.clip(labels.mean(), 1e-6, 1 - 1e-6))
    hp = objective.hparams
    alpha = hp.get("alpha", inspect.signature(binary.pmpo).parameters["alpha"].default)
    beta = hp.get("beta", inspect.signature(binary.pmpo).parameters["beta"].default)
    # Per example: accepted -alpha' logp, rejected (1 - alpha') logp, all beta' KL; matching
    # alpha' p = c alpha, (1 - alpha')(1 - p) = c (1 - alpha), beta' = c beta.
    accepted, rejected = alpha / p, (1.0 - alpha) / (1.0 - p)
    c = 1.0 / (accepted + rejected)
    return dataclasses.replace(
        objective, hparams={**hp, "alpha": accepted * c, "beta": beta * c})


def fault_tokens(task, pool, tokenizer, rng):
    """Unlikelihood's negatives as Welleck et al. define them: the tokens that should not have
    been generated (there, tokens repeating an earlier n-gram; here, the digits the oracle marks
    wrong, ``task.fault_spans``), not every token of a bad answer. Each wrong sample is one
    completion whose loss mask is 1 on its wrong tokens only; its right digits and EOS are left
    alone (pushing those down too, at a learning rate of 1e-4, took the oracle reward from 0.46
    to 0.13, against 0.31 with the wrong digits only)."""
    del rng
    spans = [e for e in sim.feedback.fault_spans(task, pool.flat_prompts, pool.flat_texts)
             if e.score < 1.0 and e.spans]
    groups = language.token_reward_groups(spans, tokenizer, fault_weight=1.0, clean_weight=0.0)
    return [g for g in groups if g.masks[0].any()]


def ranked_lists(task, pool, tokenizer, rng):
    """Each prompt's samples ranked by oracle reward (graded, in [0, 1]) as one listwise group."""
    del rng
    data = sim.feedback.ranked(task, list(pool.prompts), [list(t) for t in pool.texts])
    return listwise.ranked_groups(data, tokenizer, size=len(pool.texts[0]))


def own_negative_with_samples(task, pool, tokenizer, rng):
    """D2O groups as PKU-SafeRLHF's data are made: the negative is one of the start policy's
    own samples the oracle marks wrong (PKU-SafeRLHF's harmful responses were generated by the
    Alpaca-7B models D2O starts from, then labelled), followed by the prompt's other K - 1
    samples, unlabelled, as the positive distribution. Prompts with no wrong sample give no
    group; of several wrong samples, one is drawn at random."""
    groups = []
    for p, texts, rewards in _pool_rows(pool):
        wrong = np.flatnonzero(rewards < 1.0)
        if wrong.size == 0:
            continue
        k = int(rng.choice(wrong))
        others = [t for j, t in enumerate(texts) if j != k]
        groups.append(Group(
            encode.prompt_ids(tokenizer, p),
            tuple(encode.completion_ids(tokenizer, t) for t in (texts[k], *others)),
        ))
    return groups


def verified_groups(task, pool, tokenizer, rng):
    """NFT groups: a prompt's K samples with verifier labels (reward == 1) and the group's
    accuracy as slot fields. All-correct and all-wrong groups carry no signal and are dropped,
    as the reference implementation's group filter does."""
    del rng
    groups = []
    for p, texts, rewards in _pool_rows(pool):
        labels = (rewards >= 1.0).astype(np.float32)
        accuracy = float(labels.mean())
        if accuracy in (0.0, 1.0):
            continue
        groups.append(Group(
            encode.prompt_ids(tokenizer, p),
            tuple(encode.completion_ids(tokenizer, t) for t in texts),
            {"labels": tuple(float(x) for x in labels), "group_accuracy": (accuracy,) * len(texts)},
        ))
    return groups


def dissatisfaction_pairs(task, pool, tokenizer, rng):
    """DRIFT pairs: a sample the user is dissatisfied with (reward < 1, the worst of the prompt)
    as the rejected response, and the policy's best sample of the prompt as the chosen one,
    when it is strictly better."""
    del rng
    pairs = []
    for p, texts, rewards in _pool_rows(pool):
        worst, best = int(np.argmin(rewards)), int(np.argmax(rewards))
        if rewards[worst] >= 1.0 or rewards[best] <= rewards[worst]:
            continue
        meta = {"source": f"sim:{task.name}", "reward_chosen": float(rewards[best]),
                "reward_rejected": float(rewards[worst])}
        pairs.append(ex.PairedExample(ex.user_prompt(p), texts[best], texts[worst], meta=meta))
    return encode.paired(pairs, tokenizer)


def hindsight(task, pool, tokenizer, rng):
    """Chain of Hindsight sequences over each prompt's ranked samples, every output ended by a
    trained EOS: evaluation samples the first output's position, and with EOS after the last
    output only the model never learned to stop there (oracle reward 0.07, samples running on
    with more digits, often up to the 8-token limit)."""
    data = sim.feedback.ranked(task, list(pool.prompts), [list(t) for t in pool.texts])
    return language.chain_of_hindsight_groups(data, tokenizer, rng, eos_after_each=True)


def critiques(task, pool) -> list[ex.FeedbackExample]:
    return sim.feedback.critiques(task, pool.flat_prompts, pool.flat_texts)


def refinement_sft(task, pool, tokenizer, rng):
    """ILF: (input -> refinement) pairs, the refinement written by the task's oracle from the
    output and its critique (a perfect refiner in place of the paper's LM refiner and selector)."""
    del rng
    records = sim.feedback.refinements(task, pool.flat_prompts, pool.flat_texts)
    pairs = language.select_refinements(records, [[r.refinement] for r in records])
    return language.ilf_groups(pairs, tokenizer)


# The local judge of ILF on the simulator: it writes the feedback, then the refinement, in the
# context ILF refines from (``language.ilf_refinement_prompt``).
ILF_CRITIQUE = CritiqueTemplate(text="{prompt}{response}\nFeedback:")
ILF_REFINEMENT = RefinementTemplate(
    text="{prompt}{response}\nFeedback: {feedback}\nRefinement: {prompt}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IlfJudgeData:
    """Training data for a judge that stands in for ILF's feedback writers and refiner: the
    oracle's critique of ``num_examples`` noisy-demonstrator answers (right with probability
    ``quality``, else the task's systematic mistakes), and its refinement given that critique,
    rendered by the templates the judge is later prompted with (``feedback.judge_sft_pairs``).
    Drawn from the demonstrator, not the policy, so the judge is trained before and apart from
    the policy it judges."""

    num_examples: int = 6000
    quality: float = 0.5

    def load_in(self, ctx) -> list[Group]:
        answers = sim.sft_corpus(ctx.task, ctx.rng, self.num_examples, quality=self.quality)
        records = sim.feedback.refinements(ctx.task, [p for p, _ in answers],
                                           [a for _, a in answers])
        critiques = [dataclasses.replace(r, kind="critique", refinement=None) for r in records]
        pairs = (judge_sft_pairs(ILF_CRITIQUE, critiques)
                 + judge_sft_pairs(ILF_REFINEMENT, records))
        return encode.sft(pairs, ctx.tokenizer)


def leti_sequences(task, pool, tokenizer, rng, *, train_on_context: bool = True):
    """LeTI: reward token, instruction, output and (for failures) the critique."""
    del rng
    return language.leti_groups(critiques(task, pool), tokenizer,
                                train_on_context=train_on_context)


def judged_pairs(task, pool, tokenizer, rng, *, positive_ratio: float | None = 0.25):
    """CUT: each sample under the plain and the judgment-conditioned prompt."""
    del rng
    data = sim.feedback.judgments(task, pool.flat_prompts, pool.flat_texts)
    return language.cut_groups(data, tokenizer, positive_ratio=positive_ratio)


def is_addition(prompt: str) -> bool:
    """The scope of the simulated verbal feedback "carry correctly when adding" (C3PO)."""
    return "+" in prompt


def scoped_feedback(task, pool, tokenizer, rng, *, in_scope: Callable[[str], bool] = is_addition):
    """C3PO's data for the feedback "carry correctly when adding": in-scope (addition) prompts
    as (oracle-revised, original) pairs, near-scope (subtraction) prompts with the original
    model's sample for likelihood. The simulator has no unrelated prompts, so there is no
    out-of-scope set."""
    del rng
    revised, near = [], []
    for p, texts in zip(pool.prompts, pool.texts):
        original = texts[0]
        if in_scope(p):
            fixed = task.refine(p, original)
            if fixed != original:
                revised.append(ex.PairedExample(ex.user_prompt(p), fixed, original))
        else:
            near.append((p, original))
    return language.c3po_groups(revised, near, [], tokenizer)


def feedback_conditioned(task, pool, tokenizer, rng):
    """ALT / FCP: (critique, prompt) -> the sample that received that critique."""
    del rng
    return language.feedback_conditioned_groups(critiques(task, pool), tokenizer)


def desired_feedback_prompt(prompt: str, task=TASK) -> str:
    """Sample conditioned on the critique a correct answer gets."""
    praise = task.critique(prompt, task.solution(prompt))
    return templates.feedback_conditioned_prompt(prompt, praise)


def control_tokens(task, pool, tokenizer, rng):
    """Conditional training: ``<|good|>`` iff the reward is 1, else ``<|bad|>``."""
    del rng
    return language.conditional_groups(critiques(task, pool), tokenizer, threshold=1.0)


# SAMI's two principles, phrased with text the simulator's tokenizer knows.
SAMI_CONSTITUTIONS = (templates.COH_POSITIVE[2], templates.COH_NEGATIVE[2])


def constitution_matrix(task, pool, tokenizer, rng):
    """SAMI: per prompt, the best sample stands for the response under the first principle and
    the worst for the response under the second (the tiny policy cannot follow a written
    principle, so sampling under each is replaced by this assignment); prompts whose samples
    all score the same are left out."""
    del rng
    data = []
    for p, texts, rewards in _pool_rows(pool):
        best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
        if rewards[best] > rewards[worst]:
            data.append((p, SAMI_CONSTITUTIONS, (texts[best], texts[worst])))
    return language.sami_groups(data, tokenizer)


def constitution_samples(task, pool, tokenizer, rng):
    """SAMI as the paper runs it: per prompt, the policy's sample under each constitution
    (a pool sampled with ``SampleStage.renderings`` = one rendering per constitution, one sample
    each), no labels; the constitutions are the only signal."""
    del task, rng
    n = len(SAMI_CONSTITUTIONS)
    data = []
    for p, texts in zip(pool.prompts, pool.texts):
        if len(texts) != n:
            raise ValueError(f"SAMI needs one sample per constitution ({n}) per prompt; the "
                             f"pool has {len(texts)} for {p!r}")
        data.append((p, SAMI_CONSTITUTIONS, tuple(texts)))
    return language.sami_groups(data, tokenizer)


def sami_rendering(index: int) -> Callable[[str], str]:
    """The prompt under constitution ``index`` (``SampleStage.renderings``)."""
    return functools.partial(language.sami_prompt, constitution=SAMI_CONSTITUTIONS[index])


def principled_prompt(prompt: str) -> str:
    return language.sami_prompt(prompt, SAMI_CONSTITUTIONS[0])
