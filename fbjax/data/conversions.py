"""Pure conversions between feedback types.

Every function here is deterministic and keeps the input's ``meta`` (adding ``derived_from``
and, where useful, which side of a pair an example came from), so a converted example can
still be traced to the original file and line.

Tie rule (``scores_to_pairs``, ``ranked_to_pairs``): a pair is formed only when the chosen
score exceeds the rejected score by *more than* ``min_margin`` (default 0, i.e. strictly
better); ties never make pairs. Among equal scores the earlier completion (input order) ranks
first, so the result does not depend on sort stability of the caller's data.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fbjax.data.examples import (
    BinaryExample,
    NegativeExample,
    PairedExample,
    Prompt,
    RankedExample,
)

PAIR_STRATEGIES = ("best_vs_worst", "best_vs_rest", "all_pairs", "adjacent")


def _derived(meta: Mapping[str, Any] | None, derived_from: str, **extra: Any) -> dict[str, Any]:
    return {**(meta or {}), "derived_from": derived_from, **extra}


def paired_to_binary(example: PairedExample) -> tuple[BinaryExample, BinaryExample]:
    """The KTO recipe (Ethayarajh et al. 2024): chosen -> desirable, rejected -> undesirable.

    The pair's ``weight`` is not carried over (binary examples have none); KTO balances the
    desirable/undesirable classes with its own loss weights instead.
    """
    return (
        BinaryExample(
            example.prompt, example.chosen, True, _derived(example.meta, "paired", side="chosen")
        ),
        BinaryExample(
            example.prompt,
            example.rejected,
            False,
            _derived(example.meta, "paired", side="rejected"),
        ),
    )


def pairs_to_binary(examples: Iterable[PairedExample]) -> list[BinaryExample]:
    """``paired_to_binary`` over a dataset, flattened in order (desirable then undesirable)."""
    return [b for pair in examples for b in paired_to_binary(pair)]


def paired_to_negative(example: PairedExample) -> NegativeExample:
    """Keeps only the rejected reply: negative-only feedback (the chosen reply is discarded)."""
    return NegativeExample(
        example.prompt, example.rejected, _derived(example.meta, "paired", side="rejected")
    )


def rating_to_thumb(
    prompt: Prompt,
    completion: str,
    rating: float,
    *,
    threshold: float,
    down_below: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> BinaryExample | None:
    """Thumbs up iff ``rating >= threshold``.

    With ``down_below`` set, thumbs down only when ``rating < down_below`` and ratings in
    ``[down_below, threshold)`` are too ambiguous to label: the function returns ``None``.
    Without it every rating gets a label.
    """
    _check_finite([rating], "rating")
    if down_below is not None and down_below > threshold:
        raise ValueError(f"down_below ({down_below}) must be <= threshold ({threshold})")
    lower = threshold if down_below is None else down_below
    if rating >= threshold:
        label = True
    elif rating < lower:
        label = False
    else:
        return None
    return BinaryExample(prompt, completion, label, _derived(meta, "rating", rating=float(rating)))


def _check_finite(values: Sequence[float], what: str) -> None:
    # NaN compares false with everything, so a sort would put it anywhere (even first, i.e.
    # "chosen") and a margin test against it never fails: reject it before ordering.
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} must be finite numbers, got {bad[:3]}")


def _ordered(scores: Sequence[float]) -> list[int]:
    # Best first; ties keep input order (sorted() is stable).
    _check_finite(scores, "scores")
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def scores_to_pairs(
    prompt: Prompt,
    completions: Sequence[str],
    scores: Sequence[float],
    *,
    strategy: str = "best_vs_worst",
    min_margin: float = 0.0,
    meta: Mapping[str, Any] | None = None,
) -> list[PairedExample]:
    """Preference pairs from scored completions of one prompt.

    strategy:
      ``"best_vs_worst"``: one pair, the top-scored vs the bottom-scored completion
        (UltraFeedback-style binarisation);
      ``"best_vs_rest"``: the top completion against each other completion;
      ``"all_pairs"``: every ordered pair (i better than j);
      ``"adjacent"``: each completion against the next one in score order.
    Pairs whose score gap is not greater than ``min_margin`` are dropped (the tie rule above).
    Identical completion texts never pair.
    """
    if len(completions) != len(scores):
        raise ValueError(f"{len(completions)} completions but {len(scores)} scores")
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"strategy must be one of {PAIR_STRATEGIES}, got {strategy!r}")
    order = _ordered(scores)
    if strategy == "best_vs_worst":
        candidates = [(order[0], order[-1])] if len(order) >= 2 else []
    elif strategy == "best_vs_rest":
        candidates = [(order[0], j) for j in order[1:]]
    elif strategy == "adjacent":
        candidates = list(zip(order, order[1:]))
    else:
        candidates = [(i, j) for a, i in enumerate(order) for j in order[a + 1 :]]
    pairs = []
    for i, j in candidates:
        if scores[i] - scores[j] <= min_margin or completions[i] == completions[j]:
            continue
        pair_meta = _derived(
            meta, "scores", chosen_score=float(scores[i]), rejected_score=float(scores[j])
        )
        pairs.append(PairedExample(prompt, completions[i], completions[j], 1.0, pair_meta))
    return pairs


def ranked_to_pairs(
    example: RankedExample, *, strategy: str = "all_pairs", min_margin: float = 0.0
) -> list[PairedExample]:
    """Pairs from a best-first ranking, by ``scores_to_pairs`` on the example's scores."""
    pairs = scores_to_pairs(
        example.prompt,
        example.completions,
        example.scores,
        strategy=strategy,
        min_margin=min_margin,
        meta=example.meta,
    )
    return [
        PairedExample(
            p.prompt, p.chosen, p.rejected, p.weight, {**p.meta, "derived_from": "ranked"}
        )
        for p in pairs
    ]
