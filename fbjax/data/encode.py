"""Typed feedback examples -> token groups that the packer lays out (``fbjax.data.packing``).

One pure function per feedback shape. Every function renders text through
``fbjax.data.templates.render`` (segments tokenized separately, BOS first, EOS trained at the end
of a completion), then splits the tokens into the untrained prompt and the completion(s).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from fbjax.data import examples as ex
from fbjax.data.packing import Group
from fbjax.data.templates import Segment, render

PromptRenderer = Callable[[ex.Prompt], str]
# (prompt, completion) -> the completion's text as it follows the rendered prompt.
CompletionRenderer = Callable[[ex.Prompt, str], str]


def default_prompt_text(prompt: ex.Prompt) -> str:
    """A lone user turn is used verbatim (the simulator's form); a conversation is rendered as
    the ``\\n\\nHuman: ...\\n\\nAssistant:`` transcript the HH-RLHF-style datasets use."""
    if len(prompt) == 1 and prompt[0][0] == ex.USER:
        return prompt[0][1]
    return ex.render_transcript(prompt)


def default_completion_text(prompt: ex.Prompt, completion: str) -> str:
    """What follows :func:`default_prompt_text`: after a lone user turn the completion verbatim;
    after a transcript's open ``"Assistant:"`` one space, then the completion (the released
    HH-RLHF form; ``fbjax.data.examples.transcript_reply``)."""
    if len(prompt) == 1 and prompt[0][0] == ex.USER:
        return completion
    return ex.transcript_reply(completion)


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text) if text else [], np.int32)


def prompt_ids(tokenizer, text: str) -> np.ndarray:
    """BOS + the prompt's tokens: the context every completion of the prompt is scored from."""
    return np.concatenate([[tokenizer.bos_id], _ids(tokenizer, text)]).astype(np.int32)


def completion_ids(tokenizer, text: str) -> np.ndarray:
    """The completion's tokens followed by EOS (trained: predicting EOS is how a model stops).

    A completion whose text already ends with the EOS token (a chat template whose end-of-turn
    marker is the EOS, e.g. ChatML's ``<|im_end|>`` for Qwen2-Instruct) gets no second one.
    """
    ids = _ids(tokenizer, text)
    if ids.size and ids[-1] == tokenizer.eos_id:
        return ids
    return np.concatenate([ids, [tokenizer.eos_id]]).astype(np.int32)


def from_segments(segments: Sequence[Segment], tokenizer) -> Group:
    """A templated sequence as a one-completion group: everything before the first trainable
    token is the prompt; the rest is the completion with the template's loss mask."""
    tokens, mask = render(segments, tokenizer)
    trainable = np.flatnonzero(mask > 0)
    if trainable.size == 0:
        raise ValueError("template has no trainable segment")
    first = max(int(trainable[0]), 1)
    return Group(tokens[:first], (tokens[first:],), masks=(mask[first:],))


def sft(pairs: Sequence[tuple[str, str]], tokenizer) -> list[Group]:
    """(prompt text, demonstration) pairs."""
    return [
        Group(prompt_ids(tokenizer, p), (completion_ids(tokenizer, c),)) for p, c in pairs
    ]


def paired(
    data: Sequence[ex.PairedExample],
    tokenizer,
    *,
    prompt_text: PromptRenderer = default_prompt_text,
    completion_text: CompletionRenderer = default_completion_text,
) -> list[Group]:
    """Preference pairs: completions (chosen, rejected); slot field ``weights`` = pair weight."""
    return [
        Group(
            prompt_ids(tokenizer, prompt_text(e.prompt)),
            (completion_ids(tokenizer, completion_text(e.prompt, e.chosen)),
             completion_ids(tokenizer, completion_text(e.prompt, e.rejected))),
            {"weights": (e.weight, e.weight)},
        )
        for e in data
    ]


def unpaired(
    data: Sequence[ex.BinaryExample],
    tokenizer,
    *,
    kl_offset: int | None = 1,
    prompt_text: PromptRenderer = default_prompt_text,
    completion_text: CompletionRenderer = default_completion_text,
) -> list[Group]:
    """Thumbs up/down examples, each with KTO's mismatched completion in the same group.

    Example i is grouped with the completion of example ``(i + kl_offset) % n`` under i's prompt
    (slot field ``is_kl`` = 1): a fixed offset, so odd counts work and no example is paired with
    itself when n > 1. ``kl_offset=None`` leaves the mismatched slots out (BCO, PMPO).
    """
    n = len(data)
    groups = []
    for i, e in enumerate(data):
        prompt = prompt_ids(tokenizer, prompt_text(e.prompt))
        comp = completion_ids(tokenizer, completion_text(e.prompt, e.completion))
        label = 1.0 if e.label else 0.0
        if kl_offset is None or n < 2:
            groups.append(Group(prompt, (comp,), {"labels": (label,), "is_kl": (0.0,)}))
            continue
        # The mismatched completion follows i's prompt, so it is rendered for that prompt.
        other = completion_ids(
            tokenizer, completion_text(e.prompt, data[(i + kl_offset) % n].completion))
        groups.append(Group(prompt, (comp, other), {"labels": (label, 0.0), "is_kl": (0.0, 1.0)}))
    return groups


def negative(
    data: Sequence[ex.NegativeExample],
    tokenizer,
    *,
    prompt_text: PromptRenderer = default_prompt_text,
    completion_text: CompletionRenderer = default_completion_text,
) -> list[Group]:
    """Negative-only examples: one completion each."""
    return [
        Group(prompt_ids(tokenizer, prompt_text(e.prompt)),
              (completion_ids(tokenizer, completion_text(e.prompt, e.completion)),))
        for e in data
    ]
