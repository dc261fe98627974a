"""Ranked lists as listwise token groups (Plackett-Luce, IRPO, K-wise reward models)."""

from __future__ import annotations

from typing import Sequence

from fbjax.data import encode
from fbjax.data import examples as ex
from fbjax.data.packing import Group


def ranked_groups(
    data: Sequence[ex.RankedExample], tokenizer, *, size: int,
    prompt_text: encode.PromptRenderer = encode.default_prompt_text,
    completion_text: encode.CompletionRenderer = encode.default_completion_text,
) -> list[Group]:
    """Ranked lists as groups of exactly ``size`` completions, best first, with slot field
    ``relevance`` = the list's scores (``inputs.listwise(size)`` needs fixed-size groups).

    Longer lists keep their ``size`` best items (under Plackett-Luce the ranking of any subset
    follows the same model); shorter lists, and lists whose scores all tie (no order to learn),
    are left out.
    """
    groups = []
    for e in data:
        if len(e.completions) < size or e.scores[0] == e.scores[size - 1]:
            continue
        groups.append(Group(
            encode.prompt_ids(tokenizer, prompt_text(e.prompt)),
            tuple(encode.completion_ids(tokenizer, completion_text(e.prompt, c))
                  for c in e.completions[:size]),
            {"relevance": tuple(float(s) for s in e.scores[:size])},
        ))
    return groups


def paired_as_ranked(data: Sequence[ex.Example]) -> list[ex.Example]:
    """Preference pairs as two-item rankings (chosen scored 1, rejected 0); others unchanged."""
    return [
        ex.RankedExample(e.prompt, (e.chosen, e.rejected), (1.0, 0.0), dict(e.meta))
        if isinstance(e, ex.PairedExample) else e
        for e in data
    ]
