"""Training templates as typed data: segments of text, each trainable or not.

A template is a tuple of :class:`Segment` s and :func:`render` is the only place where text
becomes tokens. Each segment is tokenized **separately** and the ids concatenated. Tokenizing the
joined string instead would let a BPE merge straddle the prompt/completion boundary (``"=1"`` in
``"12+7=" + "19"``, or ``": b"`` before a word), and then no token boundary coincides with the
segment boundary: the loss mask would have to cut a token in half or be recovered by fragile
offset matching. Separate tokenization makes boundaries exact by construction, and it is also how
the sampler sees a prompt (tokenized alone) followed by the tokens it generates.

Builders below return segment tuples for the language-feedback methods (Chain of Hindsight, LeTI,
conditional training, ALT/FCP-style feedback conditioning). Every builder's untrainable prefix is
also available on its own (``*_prompt``), which is what the policy is sampled from at test time.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fbjax.tokenizers.protocol import Tokenizer


@dataclasses.dataclass(frozen=True)
class Segment:
    """A piece of text whose tokens are either trained on (``trainable``) or only conditioned on.

    ``bos``/``eos`` insert the tokenizer's BOS id before / EOS id after this segment's tokens
    (for formats such as Llama-2 that separate turns with ids, not text). An inserted EOS is
    trainable when the segment is: predicting it is how the model learns to stop.
    """

    text: str
    trainable: bool
    bos: bool = dataclasses.field(default=False, kw_only=True)
    eos: bool = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError(f"Segment.text must be a str, got {type(self.text).__name__}")


def render(
    segments: Sequence[Segment],
    tokenizer: Tokenizer,
    *,
    add_bos: bool = True,
    add_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes segments separately and concatenates them.

    Returns ``tokens`` (int32 ``[L]``) and ``loss_mask`` (float32 ``[L]``): 1 on the tokens of
    trainable segments, 0 elsewhere. The leading BOS is never trainable; the final EOS is
    trainable iff the last segment is (and is skipped when that segment already ends in one).
    """
    tokens: list[int] = []
    mask: list[float] = []
    if add_bos:
        tokens.append(tokenizer.bos_id)
        mask.append(0.0)
    for seg in segments:
        if seg.bos:
            tokens.append(tokenizer.bos_id)
            mask.append(0.0)
        ids = tokenizer.encode(seg.text) if seg.text else []
        tokens.extend(ids)
        mask.extend([float(seg.trainable)] * len(ids))
        if seg.eos:
            tokens.append(tokenizer.eos_id)
            mask.append(float(seg.trainable))
    if add_eos and not (segments and segments[-1].eos):
        tokens.append(tokenizer.eos_id)
        mask.append(float(bool(segments) and segments[-1].trainable))
    return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=np.float32)


def segment_token_ranges(
    segments: Sequence[Segment], tokenizer: Tokenizer, *, add_bos: bool = True
) -> tuple[tuple[int, int], ...]:
    """``[start, end)`` token positions of each segment's text in :func:`render`'s output.

    Inserted BOS/EOS ids are outside the ranges. Lets a caller place per-token weights (e.g. from
    :func:`span_token_mask`) on one segment.
    """
    pos = 1 if add_bos else 0
    out = []
    for seg in segments:
        pos += int(seg.bos)
        n = len(tokenizer.encode(seg.text)) if seg.text else 0
        out.append((pos, pos + n))
        pos += n + int(seg.eos)
    return tuple(out)


def span_token_mask(
    text: str, tokenizer, spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """float32 ``[len(tokenizer.encode(text))]``: 1 on tokens overlapping a ``[begin, end)``
    character span of ``text``.

    Because :func:`render` tokenizes each segment alone, this lines up exactly with the segment's
    block of tokens (see :func:`segment_token_ranges`). Needs ``tokenizer.encode_with_offsets``.
    """
    ids, offsets = tokenizer.encode_with_offsets(text)
    out = np.zeros(len(ids), dtype=np.float32)
    for t, (b, e) in enumerate(offsets):
        if e > b and any(b < se and sb < e for sb, se in spans):
            out[t] = 1.0
    return out


# ==================================================================== builders


def prompt_completion(prompt: str, completion: str) -> tuple[Segment, ...]:
    """Plain SFT / preference layout: condition on the prompt, train on the completion."""
    return (Segment(prompt, False), Segment(completion, True))


# ---------------------------------------------------------------- Chain of Hindsight

COH_POSITIVE = ("A helpful answer:", "A good answer:", "A correct answer:")
COH_NEGATIVE = ("An unhelpful answer:", "A bad answer:", "An incorrect answer:")


def chain_of_hindsight(
    prompt: str,
    outputs: Sequence[tuple[str, bool]],
    rng: np.random.Generator,
    *,
    positive_phrases: Sequence[str] = COH_POSITIVE,
    negative_phrases: Sequence[str] = COH_NEGATIVE,
    shuffle: bool = True,
    separator: str = "\n",
    eos_after_each: bool = True,
) -> tuple[Segment, ...]:
    """Chain of Hindsight (Liu et al., 2023): several outputs, each introduced by a feedback
    phrase saying whether it is good, in one sequence::

        {prompt}{sep}{phrase_1} {output_1}{sep}{phrase_2} {output_2} ...

    ``outputs`` are ``(text, is_good)``. Phrases are drawn from the paraphrase lists and the order
    is shuffled (``rng``) so the model cannot key on position; only outputs are trainable, so the
    model learns to produce outputs *consistent with* the preceding phrase. Sample with
    :func:`chain_of_hindsight_prompt` and a positive phrase.

    Every output is followed by a trained EOS (``eos_after_each``, as the released data writes
    ``<|eos|>`` after each output): the model learns where an output ends, so sampled from the
    test-time prompt it stops after one output. ``eos_after_each=False`` puts the EOS after the
    last output only (the separator after the others is context, never a target); a model
    trained on such sequences alone does not learn to stop after the first output.
    """
    if not outputs:
        raise ValueError("chain_of_hindsight needs at least one output")
    order = rng.permutation(len(outputs)) if shuffle else np.arange(len(outputs))
    segments = []
    head = prompt
    for k in order:
        text, good = outputs[int(k)]
        phrases = positive_phrases if good else negative_phrases
        phrase = phrases[int(rng.integers(len(phrases)))]
        segments.append(Segment(head + separator + phrase + " ", False))
        segments.append(Segment(text, True, eos=eos_after_each))
        head = ""
    return tuple(segments)


def chain_of_hindsight_prompt(
    prompt: str, phrase: str = COH_POSITIVE[0], *, separator: str = "\n"
) -> str:
    """The generation prompt matching :func:`chain_of_hindsight` (conditioned on ``phrase``)."""
    return prompt + separator + phrase + " "


# ---------------------------------------------------------------- LeTI

GOOD_TOKEN = "<|good|>"
BAD_TOKEN = "<|bad|>"


LETI_FEEDBACK_BEGIN = "<|lang_feedback|>"
LETI_FEEDBACK_END = "<|/lang_feedback|>"


def leti(
    prompt: str,
    completion: str,
    *,
    good: bool,
    feedback: str = "",
    good_token: str = GOOD_TOKEN,
    bad_token: str = BAD_TOKEN,
    feedback_begin: str = LETI_FEEDBACK_BEGIN,
    feedback_end: str = LETI_FEEDBACK_END,
    train_on_context: bool = True,
) -> tuple[Segment, ...]:
    """LeTI (Wang et al., 2023): a binary reward token, then the textual feedback (failures
    only), then the problem and the model's solution::

        {<|good|> or <|bad|>}{feedback_begin}{feedback}{feedback_end}{prompt}{completion}

    as the released ``run_leti.py`` writes it: the feedback comes *before* the program, so the
    program is generated conditioned on it, and the language-modelling loss covers every token
    after the reward token (feedback, problem and solution; the reward token itself is the first
    token there and never a target, so it is not trained here either). ``train_on_context=False``
    trains the solution only (a deviation, for ablations). Sample with :func:`leti_prompt` (the
    good token, no feedback, then the problem), which is exactly a good example's prefix.

    The markers are LeTI's special tokens; a tokenizer without them as single pieces writes
    them as text.
    """
    segments = [Segment(good_token if good else bad_token, False)]
    if feedback:
        segments.append(Segment(feedback_begin + feedback + feedback_end, train_on_context))
    segments.append(Segment(prompt, train_on_context))
    segments.append(Segment(completion, True))
    return tuple(segments)


def leti_prompt(
    prompt: str,
    reward_token: str = GOOD_TOKEN,
    *,
    feedback: str = "",
    feedback_begin: str = LETI_FEEDBACK_BEGIN,
    feedback_end: str = LETI_FEEDBACK_END,
) -> str:
    """The text before the solution in :func:`leti`: reward token, feedback (if any), problem.
    Sampling uses the good token and no feedback."""
    head = reward_token + (feedback_begin + feedback + feedback_end if feedback else "")
    return head + prompt


# ---------------------------------------------------------------- conditional training


def conditional_training(
    prompt: str,
    completion: str,
    reward: float,
    *,
    threshold: float,
    good_token: str = GOOD_TOKEN,
    bad_token: str = BAD_TOKEN,
) -> tuple[Segment, ...]:
    """Conditional training (Korbak et al., 2023): a control token chosen by thresholding the
    reward (``reward >= threshold`` is good) prefixes the sequence; the completion is trained on.
    Sample with :func:`conditional_prompt` (the good token)."""
    token = good_token if reward >= threshold else bad_token
    return (Segment(conditional_prompt(prompt, token), False), Segment(completion, True))


def conditional_prompt(prompt: str, control_token: str = GOOD_TOKEN) -> str:
    return control_token + prompt


# ---------------------------------------------------------------- ALT / FCP


def feedback_conditioned(
    prompt: str,
    completion: str,
    feedback: str,
    *,
    feedback_prefix: str = "Feedback: ",
    feedback_suffix: str = "\n",
) -> tuple[Segment, ...]:
    """Feedback-conditioned policy (ALT, Lloret et al. 2024; FCP): the feedback a completion
    received is placed before its prompt, and the completion trained on::

        {feedback_prefix}{feedback}{feedback_suffix}{prompt}{completion}

    At generation time condition on the feedback of an ideal answer (e.g. the oracle's critique
    of a correct output) with :func:`feedback_conditioned_prompt`.
    """
    head = feedback_conditioned_prompt(
        prompt, feedback, feedback_prefix=feedback_prefix, feedback_suffix=feedback_suffix
    )
    return (Segment(head, False), Segment(completion, True))


def feedback_conditioned_prompt(
    prompt: str,
    feedback: str,
    *,
    feedback_prefix: str = "Feedback: ",
    feedback_suffix: str = "\n",
) -> str:
    return feedback_prefix + feedback + feedback_suffix + prompt
