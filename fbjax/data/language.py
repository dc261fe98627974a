"""Language feedback -> training groups: one pure function per method, plus ILF's loop.

Every function here maps typed feedback records (``fbjax.data.examples``, ``fbjax.sim.feedback``)
to :class:`~fbjax.data.packing.Group` s that the ordinary packer and training step consume; the
objective that reads them is bound in ``fbjax.train.language_inputs``.

=====================  ==================================  ======================================
method                 data function                       objective (language_inputs)
=====================  ==================================  ======================================
Chain of Hindsight     :func:`chain_of_hindsight_groups`   ``chain_of_hindsight`` (+ pretraining)
                       :func:`forgetful_key_visibility`,
                       :func:`mask_past_tokens`,
                       :func:`pretraining_groups`
LeTI                   :func:`leti_groups`,                ``leti`` (+ pretraining)
                       :func:`mix_pretraining`
conditional training   :func:`conditional_groups`          ``conditional_training`` (likelihood)
ALT / FCP              :func:`feedback_conditioned_groups` ``alt`` (likelihood + KL - entropy),
                       :func:`feedback_balanced_pool`      ``feedback_conditioned`` (likelihood)
ILF                    :func:`ilf_iteration`,              ``ilf`` (likelihood of refinements)
                       :func:`ilf_loop`
CUT                    :func:`cut_groups`                  ``cut`` (``aligned_pairs`` layout)
C3PO                   :func:`c3po_groups`                 ``c3po`` (``scoped_pairs`` layout)
SAMI                   :func:`sami_groups`                 ``sami(n)`` (``sami_matrix`` layout)
token-level rewards    :func:`token_reward_groups`         ``token_weighted`` (``signed_tokens``)
=====================  ==================================  ======================================

**Several prompts in one group.** CUT compares one response under two prompts, and SAMI scores
n responses under n constitutions; a ``Group`` has one prompt. :func:`multi_prompt_group` keeps
such sequences together anyway: the group's prompt is the longest common token prefix of the
contexts (at least BOS), and each completion is the rest of its own context (loss weight 0)
followed by its response. The packer then keeps the sequences in one row, in order, in
consecutive slots, with or without prefix sharing, and the log-probs of each response are those
of the full (context, response) sequence.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fbjax.data import encode
from fbjax.data import examples as ex
from fbjax.data import templates
from fbjax.data.packing import Group

PromptLike = str | ex.Prompt


def prompt_text(prompt: PromptLike) -> str:
    """The text a prompt is shown as: task prompt strings verbatim, conversations through
    ``fbjax.data.encode.default_prompt_text``."""
    return prompt if isinstance(prompt, str) else encode.default_prompt_text(prompt)


def _scored_ids(tokenizer, text: str) -> np.ndarray:
    return encode.completion_ids(tokenizer, text)


# ----------------------------------------------------------------------------- shared layouts


def multi_prompt_group(
    sequences: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    slot_fields: Mapping[str, Sequence[float]] | None = None,
) -> Group:
    """Sequences with *different* contexts as one group (see the module docstring).

    ``sequences``: ``(context_ids, response_ids, response_weights or None)`` per completion
    slot, in slot order. The longest common prefix of the contexts becomes the group's prompt
    (at least one token, so every context must start with the same token, e.g. BOS).
    """
    if not sequences:
        raise ValueError("multi_prompt_group needs at least one sequence")
    contexts = [np.asarray(c, np.int32) for c, _, _ in sequences]
    if any(len(c) < 1 for c in contexts) or len({int(c[0]) for c in contexts}) != 1:
        raise ValueError("every context must be non-empty and start with the same token (BOS)")
    shortest = min(len(c) for c in contexts)
    common = 1
    while common < shortest and len({int(c[common]) for c in contexts}) == 1:
        common += 1
    # Identical contexts (CUT's positives) share everything but the responses.
    prompt = contexts[0][:common]
    completions, masks = [], []
    for context, (_, response, weights) in zip(contexts, sequences):
        response = np.asarray(response, np.int32)
        w = np.ones(len(response)) if weights is None else np.asarray(weights)
        rest = context[common:]
        completions.append(np.concatenate([rest, response]).astype(np.int32))
        masks.append(np.concatenate([np.zeros(len(rest)), w]).astype(np.float32))
    fields = {k: tuple(float(x) for x in v) for k, v in (slot_fields or {}).items()}
    return Group(prompt, tuple(completions), fields, tuple(masks))


def with_slot_fields(groups: Sequence[Group], **fields: float) -> list[Group]:
    """The same groups with constant slot fields added to every completion (e.g. marking a
    data source for a mixture loss: ``with_slot_fields(groups, pretraining=0.0)``)."""
    out = []
    for g in groups:
        extra = {k: (float(v),) * len(g.completions) for k, v in fields.items()}
        out.append(Group(g.prompt, g.completions, {**g.slot_fields, **extra}, g.masks))
    return out


# ----------------------------------------------------------------------------- Chain of Hindsight


# The four sequences the released data writes per comparison (``coh/data/pack_hf.py``):
# positive only, negative only, positive then negative, negative then positive.
COH_ORDERS: tuple[tuple[bool, ...], ...] = ((True,), (False,), (True, False), (False, True))


def chain_of_hindsight_groups(
    data: Sequence[ex.RankedExample],
    tokenizer,
    rng: np.random.Generator,
    *,
    good_threshold: float = 1.0,
    past_mask_rate: float = 0.0,
    positive_phrases: Sequence[str] = templates.COH_POSITIVE,
    negative_phrases: Sequence[str] = templates.COH_NEGATIVE,
    eos_after_each: bool = True,
    orders: Sequence[Sequence[bool]] | None = COH_ORDERS,
) -> list[Group]:
    """Chain of Hindsight sequences (``templates.chain_of_hindsight``), loss on the outputs and
    on the EOS written after every output.

    With ``orders`` (default :data:`COH_ORDERS`, the released ``p, n, pn, np``), each example is
    a comparison: its best-scored completion is the positive, its worst the negative, and one
    sequence is written per order (``True`` = the positive under a positive phrase, ``False`` =
    the negative under a negative phrase); the prompt appears once, before the first output.
    Phrases are drawn per sequence from the paraphrase lists (index-paired when the lists have
    equal length, as the released ``aux`` markers are). Examples whose completions all score
    the same are skipped. ``orders=None`` writes one sequence of *all* outputs in random order,
    each labelled by ``score >= good_threshold`` (an extension for rankings).

    ``past_mask_rate > 0`` replaces context tokens by UNK (:func:`mask_past_tokens`, rate drawn
    from ``[0, past_mask_rate]``); off by default. The released "random past-token masking" is
    Forgetful Causal Masking, an attention mask (:func:`forgetful_key_visibility`), also off in
    its released defaults. Slot field ``pretraining = 0`` marks the groups for
    :func:`pretraining_groups` mixtures. At test time sample from
    ``templates.chain_of_hindsight_prompt(prompt, positive phrase)``.
    """
    paired = len(positive_phrases) == len(negative_phrases)
    groups = []
    for e in data:
        text = prompt_text(e.prompt)
        if orders is None:
            outputs = [(c, s >= good_threshold) for c, s in zip(e.completions, e.scores)]
            sequences = [templates.chain_of_hindsight(
                text, outputs, rng, positive_phrases=positive_phrases,
                negative_phrases=negative_phrases, eos_after_each=eos_after_each,
            )]
        else:
            scores = np.asarray(e.scores, float)
            if scores.max() == scores.min():
                continue
            pos, neg = e.completions[int(np.argmax(scores))], e.completions[int(np.argmin(scores))]
            sequences = []
            for order in orders:
                k = int(rng.integers(len(positive_phrases)))
                good = (positive_phrases[k],)
                bad = (negative_phrases[k if paired else int(rng.integers(len(negative_phrases)))],)
                outputs = [(pos, True) if o else (neg, False) for o in order]
                sequences.append(templates.chain_of_hindsight(
                    text, outputs, rng, positive_phrases=good, negative_phrases=bad,
                    shuffle=False, eos_after_each=eos_after_each,
                ))
        for segments in sequences:
            group = encode.from_segments(segments, tokenizer)
            if past_mask_rate > 0:
                group = mask_past_tokens(
                    group, rng, rate=float(rng.uniform(0.0, past_mask_rate)),
                    mask_id=tokenizer.unk_id,
                )
            groups.append(group)
    return with_slot_fields(groups, pretraining=0.0)


def forgetful_key_visibility(
    group: Group, rng: np.random.Generator, *, min_ratio: float = 0.0, max_ratio: float = 0.0
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Forgetful Causal Masking for one group: which tokens may be attended to as keys.

    Returns float ``{0, 1}`` arrays shaped like ``group.prompt`` and each completion: a ratio
    ``r ~ U[min_ratio, max_ratio]`` is drawn for the sequence, then each token is hidden with
    probability ``r``, the first token (BOS) never. Inputs and targets are unchanged: every
    token is still predicted, from the keys that stay visible; the decoder takes the result as
    ``key_visible`` (``fbjax.models.decoder.attention_mask``).

    The released model (``coh/gptj.py``) drops each (query, key) entry independently; here a
    hidden key is hidden from every query of its sequence, so the mask is one value per token
    that the data can carry, with the same expected fraction of dropped entries. Released
    defaults: ``fcm_min_ratio = fcm_max_ratio = 0`` (off).
    """
    if not 0.0 <= min_ratio <= max_ratio <= 1.0:
        raise ValueError(f"need 0 <= min_ratio <= max_ratio <= 1, got {min_ratio}, {max_ratio}")
    ratio = float(rng.uniform(min_ratio, max_ratio))
    pieces = [group.prompt, *group.completions]
    n = sum(len(p) for p in pieces)
    visible = (rng.random(n) >= ratio).astype(np.float32)
    visible[0] = 1.0
    parts = np.split(visible, np.cumsum([len(p) for p in pieces])[:-1])
    return parts[0], tuple(parts[1:])


def mask_past_tokens(group: Group, rng: np.random.Generator, *, rate: float, mask_id: int) -> Group:
    """Chain of Hindsight's regulariser: replace a random ``rate`` of the context tokens by
    ``mask_id`` (e.g. the tokenizer's unk id), so the model cannot solve the task by copying an
    earlier output of the same sequence.

    Done on the data, not in the model, so the step and attention stay untouched. Every token
    except the first (BOS) and the last can be replaced; a replaced token that was trained on
    gets loss weight 0 (the model must never learn to *predict* ``mask_id``), but the tokens
    after it are still trained, now conditioned on the corrupted context.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    pieces = [group.prompt, *group.completions]
    tokens = np.concatenate(pieces).astype(np.int32)
    n = len(tokens)
    masks = group.masks or tuple(np.ones(len(c), np.float32) for c in group.completions)
    weights = np.concatenate([np.zeros(len(group.prompt), np.float32), *masks])
    # One draw per token, fixed in number, so a sequence's masking does not shift the stream
    # of the sequences after it by its own content.
    hit = rng.random(n) < rate
    hit[0] = hit[-1] = False
    tokens = np.where(hit, mask_id, tokens).astype(np.int32)
    weights = np.where(hit, 0.0, weights).astype(np.float32)
    cuts = np.cumsum([len(p) for p in pieces])[:-1]
    parts = np.split(tokens, cuts)
    wparts = np.split(weights, cuts)
    return Group(parts[0], tuple(parts[1:]), group.slot_fields, tuple(wparts[1:]))


def pretraining_groups(texts: Sequence[str], tokenizer) -> list[Group]:
    """Plain text for the pretraining term of CoH / LeTI: BOS, then every token trained
    (slot field ``pretraining = 1``)."""
    groups = [
        Group(np.asarray([tokenizer.bos_id], np.int32), (_scored_ids(tokenizer, t),))
        for t in texts
    ]
    return with_slot_fields(groups, pretraining=1.0)


# ----------------------------------------------------------------------------- LeTI, conditional


def _score(e: ex.FeedbackExample) -> float:
    if e.score is None:
        raise ValueError("this method needs FeedbackExample.score (the scalar outcome)")
    return float(e.score)


def leti_groups(
    data: Sequence[ex.FeedbackExample],
    tokenizer,
    *,
    good_threshold: float = 1.0,
    train_on_context: bool = True,
) -> list[Group]:
    """LeTI sequences (``templates.leti``): reward token (``<|good|>`` iff
    ``score >= good_threshold``), the textual feedback for failures only, then the instruction
    and the model's output; every token after the reward token is trained. Slot field
    ``pretraining = 0``; the released code mixes pretraining text 1:1
    (:func:`mix_pretraining`). Sample with ``templates.leti_prompt(prompt)`` (good token).
    """
    groups = []
    for e in data:
        good = _score(e) >= good_threshold
        segments = templates.leti(
            prompt_text(e.prompt), e.completion, good=good,
            feedback="" if good else e.feedback, train_on_context=train_on_context,
        )
        groups.append(encode.from_segments(segments, tokenizer))
    return with_slot_fields(groups, pretraining=0.0)


def mix_pretraining(
    groups: Sequence[Group], pretraining: Sequence[Group], *, ratio: float = 1.0
) -> list[Group]:
    """``groups`` followed by ``round(ratio * len(groups))`` pretraining groups (from
    :func:`pretraining_groups`), cycling through ``pretraining`` when it is shorter.

    LeTI's released trainer (``run_leti.py``, ``mix_pretrain_data``) takes one optimizer step on
    a pretraining batch after every feedback batch, restarting the pretraining loader when it
    runs out: a 1:1 mixture by example (``ratio=1``, the default). Here the two kinds share
    batches (the batch stream shuffles groups) instead of alternating steps; the proportion, and
    with ``nll_with_pretraining``'s weight 1 the expected gradient, are the same.
    """
    if ratio < 0:
        raise ValueError(f"mix_pretraining: ratio must be >= 0, got {ratio}")
    count = int(round(ratio * len(groups)))
    if count and not pretraining:
        raise ValueError("mix_pretraining: ratio > 0 but no pretraining groups were given")
    extra = [pretraining[k % len(pretraining)] for k in range(count)]
    return list(groups) + extra


def conditional_groups(
    data: Sequence[ex.FeedbackExample],
    tokenizer,
    *,
    threshold: float,
    untagged_fraction: float = 0.01,
    rng: np.random.Generator | None = None,
) -> list[Group]:
    """Conditional training: ``<|good|>`` iff ``score >= threshold`` (inclusive), else
    ``<|bad|>``, then the prompt; likelihood of the completion
    (``templates.conditional_training``). Sample with ``templates.conditional_prompt(prompt)``.

    Korbak et al.'s released code (``apo/dataset_wrappers.py``, ``configs/toxicity/
    conditional.yml``) tags a sentence aligned iff its misalignment score is ``<= threshold``
    (toxicity: 0.00056) and leaves a fraction ``drop_token_fraction = 0.01`` of sentences
    without any tag. Scores here are rewards (higher is better): pass ``score = -toxicity`` and
    ``threshold = -0.00056`` for the same rule, boundary included. ``untagged_fraction`` of the
    examples (drawn from ``rng``; a generator seeded 0 when none is given, so the data are
    reproducible) get the plain prompt with no control token, so the model also learns the
    unconditional distribution; 0 tags everything.
    """
    if not 0.0 <= untagged_fraction <= 1.0:
        raise ValueError(f"conditional_groups: untagged_fraction must be in [0, 1], "
                         f"got {untagged_fraction}")
    rng = np.random.default_rng(0) if rng is None else rng
    # One draw per example, whatever the fraction, so the fraction does not shift the stream.
    untagged = rng.random(len(data)) < untagged_fraction
    groups = []
    for e, plain in zip(data, untagged):
        text = prompt_text(e.prompt)
        segments = (
            templates.prompt_completion(text, e.completion) if plain
            else templates.conditional_training(text, e.completion, _score(e),
                                                threshold=threshold)
        )
        groups.append(encode.from_segments(segments, tokenizer))
    return groups


def feedback_conditioned_groups(
    data: Sequence[ex.FeedbackExample],
    tokenizer,
    *,
    feedback_prefix: str = "Feedback: ",
    feedback_suffix: str = "\n",
) -> list[Group]:
    """ALT / FCP: (feedback, prompt) -> the completion that received that feedback, trained by
    likelihood (``templates.feedback_conditioned``). Sample conditioned on the feedback an ideal
    completion would get (``templates.feedback_conditioned_prompt``); for iteration, sample,
    collect fresh feedback on the samples and build groups again."""
    return [
        encode.from_segments(
            templates.feedback_conditioned(
                prompt_text(e.prompt), e.completion, e.feedback,
                feedback_prefix=feedback_prefix, feedback_suffix=feedback_suffix,
            ),
            tokenizer,
        )
        for e in data
    ]


def feedback_balanced_pool(
    data: Sequence[ex.FeedbackExample],
    rng: np.random.Generator,
    *,
    per_feedback: int | None = None,
) -> list[ex.FeedbackExample]:
    """ALT's training draw from its data pool: for every prompt, up to ``per_feedback``
    examples of *each* distinct feedback that prompt received, chosen uniformly without
    replacement (``None``: all of them). Output order: prompts in first-seen order, feedback
    categories in first-seen order within a prompt, then the drawn examples in draw order.

    The released pool (``alt/data_pool.py``, ``get_samples(num_samples_per_quantile)``) samples
    the same number per feedback category (reward quantile or feedback text) and prompt, so
    rare kinds of feedback are not drowned by common ones; it also prefers generations under 64
    tokens when filling a category, which is not reproduced here.
    """
    if per_feedback is not None and per_feedback < 1:
        raise ValueError(f"feedback_balanced_pool: per_feedback must be >= 1 or None, "
                         f"got {per_feedback}")
    by_prompt: dict[str, dict[str, list[int]]] = {}
    for k, e in enumerate(data):
        by_prompt.setdefault(prompt_text(e.prompt), {}).setdefault(e.feedback, []).append(k)
    out = []
    for categories in by_prompt.values():
        for indices in categories.values():
            if per_feedback is None or per_feedback >= len(indices):
                chosen = indices
            else:
                chosen = [indices[int(i)] for i in rng.permutation(len(indices))[:per_feedback]]
            out.extend(data[i] for i in chosen)
    return out


# ----------------------------------------------------------------------------- ILF


def ilf_refinement_prompt(prompt: str, output: str, feedback: str) -> str:
    """The context a refinement is generated from: input, the output, the feedback on it."""
    return f"{prompt}{output}\nFeedback: {feedback}\nRefinement: {prompt}"


_WORD = re.compile(r"\w+")


def bow_cosine(a: str, b: str) -> float:
    """Cosine similarity of bag-of-words counts (lower-cased ``\\w+`` words); 0 if either is
    empty. A dependency-free stand-in for ILF's embedding similarity."""
    ca, cb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    dot = sum(ca[w] * cb[w] for w in ca)
    na = math.sqrt(sum(v * v for v in ca.values()))
    nb = math.sqrt(sum(v * v for v in cb.values()))
    return dot / (na * nb) if na and nb else 0.0


Scorer = Callable[[ex.FeedbackExample, str], float]


def feedback_similarity(example: ex.FeedbackExample, refinement: str) -> float:
    """ILF's default selection score: how well a refinement matches the feedback."""
    return bow_cosine(example.feedback, refinement)


def select_refinements(
    data: Sequence[ex.FeedbackExample],
    candidates: Sequence[Sequence[str]],
    *,
    scorer: Scorer = feedback_similarity,
) -> list[tuple[str, str]]:
    """The best candidate refinement of each example under ``scorer`` (first one on ties), as
    ``(prompt text, refinement)`` pairs for fine-tuning. Examples without candidates are
    dropped."""
    if len(candidates) != len(data):
        raise ValueError(f"{len(data)} examples but {len(candidates)} candidate lists")
    out = []
    for e, cands in zip(data, candidates):
        if not cands:
            continue
        scores = [scorer(e, c) for c in cands]
        out.append((prompt_text(e.prompt), cands[int(np.argmax(scores))]))
    return out


def ilf_iteration(
    data: Sequence[ex.FeedbackExample],
    refine: Callable[[list[str]], Sequence[Sequence[str]]],
    *,
    scorer: Scorer = feedback_similarity,
) -> list[tuple[str, str]]:
    """One ILF data step: ``refine`` maps the refinement prompts (:func:`ilf_refinement_prompt`)
    to candidate refinements each, and the best by ``scorer`` is kept per example."""
    prompts = [ilf_refinement_prompt(prompt_text(e.prompt), e.completion, e.feedback)
               for e in data]
    return select_refinements(data, refine(prompts), scorer=scorer)


def ilf_groups(pairs: Sequence[tuple[str, str]], tokenizer) -> list[Group]:
    """Supervised fine-tuning data ``input -> refinement``."""
    return encode.sft(pairs, tokenizer)


def ilf_refinement_groups(records: Sequence[ex.FeedbackExample], tokenizer) -> list[Group]:
    """ILF's fine-tuning data from refinement records (an online round's, e.g.
    ``fbjax.run.online.Refine``'s): input -> the selected refinement; records without one are
    left out."""
    pairs = [(prompt_text(r.prompt), r.refinement) for r in records
             if getattr(r, "refinement", None)]
    return ilf_groups(pairs, tokenizer)


def ilf_loop(
    state: Any,
    prompts: Sequence[str],
    *,
    generate: Callable[[Any, list[str]], Sequence[str]],
    feedback: Callable[[Sequence[str], Sequence[str]], Sequence[ex.FeedbackExample]],
    refine: Callable[[Any, list[str]], Sequence[Sequence[str]]],
    train: Callable[[Any, list[tuple[str, str]]], Any],
    iterations: int,
    scorer: Scorer = feedback_similarity,
) -> tuple[Any, list[list[tuple[str, str]]]]:
    """Imitation learning from Language Feedback, iterated.

    Each iteration: the policy (``state``, e.g. parameters) answers the prompts (``generate``),
    feedback is collected on the answers (``feedback``), refinements are generated conditioned
    on (input, answer, feedback) and selected (:func:`ilf_iteration`, with ``refine(state,
    prompts)``), and the policy is fine-tuned on ``input -> refinement`` (``train``). Every
    stage is a callable, so the loop runs with a real sampler and trainer or with fakes.

    Returns the final state and the selected pairs of every iteration.
    """
    history = []
    for _ in range(iterations):
        outputs = generate(state, list(prompts))
        records = feedback(prompts, outputs)
        pairs = ilf_iteration(records, lambda ps: refine(state, ps), scorer=scorer)
        history.append(pairs)
        if pairs:
            state = train(state, pairs)
    return state, history


# ----------------------------------------------------------------------------- CUT


# CUT's released judged prompt (``templates/alpaca.json``, ``prompt_no_input_judge``): the
# request to match the judgment, the instruction, then the judgment. The plain counterpart is
# ``prompt_no_input``. Use both for Alpaca-formatted data (``cut_groups(judged_prompt=
# cut_alpaca_judged_prompt, plain_prompt=cut_alpaca_prompt)``).
CUT_ALPACA_JUDGED = (
    "Below is an instruction that describes a task. Write a response to the instruction and the "
    "response should match the corresponding judgment.\n\n### Instruction:\n{instruction}\n\n"
    "### Judgment:\n{judgment}\n\n### Response:\n"
)
CUT_ALPACA_PLAIN = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def cut_alpaca_judged_prompt(prompt: str, judgment: str) -> str:
    """CUT's released judged prompt, word for word (:data:`CUT_ALPACA_JUDGED`)."""
    return CUT_ALPACA_JUDGED.format(instruction=prompt, judgment=judgment)


def cut_alpaca_prompt(prompt: str) -> str:
    """CUT's released plain prompt (:data:`CUT_ALPACA_PLAIN`)."""
    return CUT_ALPACA_PLAIN.format(instruction=prompt)


def cut_judged_prompt(prompt: str, judgment: str) -> str:
    """The judgment-conditioned context of CUT in the data's own prompt format, in the released
    order: the instruction (the plain prompt), then the judgment, then the request to respond
    so as to match it; the response follows. Shorter than :func:`cut_alpaca_judged_prompt`
    (which also wraps the plain prompt) so that it fits short-context models."""
    return f"{prompt}\nJudgment: {judgment}\nA response matching the judgment:\n"


def _identity(prompt: str) -> str:
    return prompt


def cut_groups(
    data: Sequence[ex.FeedbackExample],
    tokenizer,
    *,
    negative_threshold: float = 1.0,
    judged_prompt: Callable[[str, str], str] = cut_judged_prompt,
    plain_prompt: Callable[[str], str] = _identity,
    positive_ratio: float | None = 0.25,
    rng: np.random.Generator | None = None,
) -> list[Group]:
    """CUT pairs: slot 0 = the response under the plain prompt, slot 1 = the *same* response
    tokens under the judgment-conditioned prompt (via :func:`multi_prompt_group`).

    Responses with ``score < negative_threshold`` carry a negative judgment: CUT trains slot 1
    by likelihood (Align-N) and slot 0 by unlikelihood on the tokens the judgment blames
    (Misalign). Responses at or above the threshold (Align-P) get the plain prompt in *both*
    slots, so the detector's ratio is exactly 1 and the loss is their plain likelihood (CUT
    trains positives without the judgment). The response tokens are identical in both slots,
    which is what ``fbjax.train.language_inputs.aligned_pairs`` relies on to line them up.
    Slot field ``negative`` records which case a pair is.

    As in the released ``finetune_unlikelihood.py`` (``--downsample 0.25``), positives are
    downsampled to ``int(positive_ratio * n_negative)`` when there are more, chosen uniformly
    (``rng``; a generator seeded 0 when none is given); groups keep the data's order.
    ``positive_ratio=None`` keeps every positive.
    """
    if positive_ratio is not None and positive_ratio < 0:
        raise ValueError(f"cut_groups: positive_ratio must be >= 0 or None, got {positive_ratio}")
    negative = [_score(e) < negative_threshold for e in data]
    keep = np.ones(len(data), bool)
    if positive_ratio is not None:
        positives = np.flatnonzero(~np.asarray(negative, bool))
        n_keep = int(sum(negative) * positive_ratio)
        if n_keep < len(positives):
            rng = np.random.default_rng(0) if rng is None else rng
            keep[positives] = False
            keep[rng.choice(positives, size=n_keep, replace=False)] = True
    groups = []
    for e, neg, kept in zip(data, negative, keep):
        if not kept:
            continue
        text = prompt_text(e.prompt)
        response = _scored_ids(tokenizer, e.completion)
        plain = encode.prompt_ids(tokenizer, plain_prompt(text))
        judged = plain
        if neg:
            judged = encode.prompt_ids(tokenizer, judged_prompt(text, e.feedback))
        flag = float(neg)
        groups.append(multi_prompt_group(
            [(plain, response, None), (judged, response, None)], {"negative": (flag, flag)}
        ))
    return groups


# ----------------------------------------------------------------------------- C3PO


def c3po_groups(
    in_scope: Sequence[ex.PairedExample],
    near_scope: Sequence[tuple[PromptLike, str]],
    out_of_scope: Sequence[tuple[PromptLike, str]],
    tokenizer,
) -> list[Group]:
    """C3PO's mixed batch: in-scope prompts as (revised, original) pairs (``chosen`` = the
    completion revised to follow the feedback, ``rejected`` = the original model's), and
    near- / out-of-scope prompts with the *original model's* completion alone.

    Slot field ``scope`` holds ``fbjax.objectives.language.SCOPE_*`` per completion; the order
    of the returned groups is in-scope, near, out (the batch stream shuffles them).
    """
    # The loss owns the meaning of the scope values; imported here, not at the top, so that
    # the rest of this module stays importable without JAX.
    from fbjax.objectives.language import (
        SCOPE_IN_CHOSEN, SCOPE_IN_REJECTED, SCOPE_NEAR, SCOPE_OUT,
    )

    groups = [
        Group(
            encode.prompt_ids(tokenizer, prompt_text(e.prompt)),
            (_scored_ids(tokenizer, e.chosen), _scored_ids(tokenizer, e.rejected)),
            {"scope": (SCOPE_IN_CHOSEN, SCOPE_IN_REJECTED)},
        )
        for e in in_scope
    ]
    for kind, data in ((SCOPE_NEAR, near_scope), (SCOPE_OUT, out_of_scope)):
        groups += [
            Group(encode.prompt_ids(tokenizer, prompt_text(p)), (_scored_ids(tokenizer, y),),
                  {"scope": (kind,)})
            for p, y in data
        ]
    return groups


# ----------------------------------------------------------------------------- SAMI


def sami_prompt(query: str, constitution: str) -> str:
    """The context of SAMI's ``log p(y | x, c)``: the constitution, then the query."""
    return f"{constitution}\n{query}"


def sami_groups(
    data: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    tokenizer,
    *,
    context: Callable[[str, str], str] = sami_prompt,
    score_eos: bool = False,
    keep_identical: bool = False,
) -> list[Group]:
    """One group per query ``(x, constitutions c_1..c_n, responses y_1..y_n)`` (``y_j`` sampled
    under ``c_j``) with ``n * n`` slots: slot ``i * n + j`` is ``y_j`` under ``(x, c_i)``, so
    ``inputs.listwise(n * n)`` reshaped to ``[G, n, n]`` is SAMI's matrix ``L_ij``
    (``fbjax.train.language_inputs.sami_matrix``). ``train.slots_per_row`` must be a multiple
    of ``n * n``.

    Each response ends in EOS, unscored by default as in SAMI's released code (``_get_mask``:
    responses are cut at the first EOS when sampled, so its probability says nothing about the
    constitution); ``score_eos=True`` scores it.

    A query whose responses are not all different is left out, as SAMI's released generation
    script drops a pair whose two responses are the same text (``generate.py``): two equal
    columns of ``L`` pull against each other, so the query adds no gradient and only dilutes
    the batch mean. ``keep_identical=True`` keeps it."""
    groups = []
    for query, constitutions, responses in data:
        if len(constitutions) != len(responses):
            raise ValueError(
                f"{len(constitutions)} constitutions but {len(responses)} responses for {query!r}"
            )
        if not keep_identical and len(set(responses)) < len(responses):
            continue
        contexts = [encode.prompt_ids(tokenizer, context(query, c)) for c in constitutions]
        ys = [_scored_ids(tokenizer, y) for y in responses]
        weights = [np.concatenate([np.ones(len(y) - 1), [float(score_eos)]]) for y in ys]
        groups.append(multi_prompt_group(
            [(c, y, w) for c in contexts for y, w in zip(ys, weights)]
        ))
    return groups


# ----------------------------------------------------------------------------- token rewards


def token_reward_groups(
    data: Sequence[Any],
    tokenizer,
    *,
    fault_weight: float = -1.0,
    clean_weight: float = 1.0,
) -> list[Group]:
    """Span-level critiques (``fbjax.sim.feedback.SpanExample``: ``prompt``, ``completion``,
    ``spans``) -> per-token signed weights in the completion's loss mask: ``fault_weight`` on
    tokens overlapping a faulty character span, ``clean_weight`` on the others and on EOS.

    The signed weights ride in ``loss_mask``; only token-level objectives
    (``language_inputs.signed_tokens``) may read such batches, since sequence sums and lengths
    of signed weights mean nothing.
    """
    groups = []
    for e in data:
        ids, _ = tokenizer.encode_with_offsets(e.completion)
        faulty = templates.span_token_mask(e.completion, tokenizer, e.spans)
        weights = np.where(faulty > 0, fault_weight, clean_weight).astype(np.float32)
        completion = np.asarray(list(ids) + [tokenizer.eos_id], np.int32)
        weights = np.concatenate([weights, [clean_weight]]).astype(np.float32)
        groups.append(Group(encode.prompt_ids(tokenizer, prompt_text(e.prompt)), (completion,),
                            masks=(weights,)))
    return groups
