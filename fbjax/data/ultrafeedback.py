"""UltraFeedback (Cui et al. 2023): GPT-4-annotated completions, as pairs, thumbs and critiques.

Original format
---------------
The ``openbmb/UltraFeedback`` release: JSON-lines files, one per prompt source (``evol_instruct``,
``false_qa``, ``flan``, ``sharegpt``, ``truthful_qa``, ``ultrachat``). Each line::

    {"source": str, "instruction": str, "models": [str, ...],
     "completions": [
        {"model": str, "principle": str, "custom_system_prompt": str, "response": str,
         "annotations": {
             "instruction_following": {"Rating": "4", "Rationale": str},
             "honesty": {"Rating": "5", "Rationale": str},
             "truthfulness": {"Type": [...], "Rationale": str, "Rating": "3",
                              "Rationale For Rating": str},
             "helpfulness": {"Type": [...], "Rationale": str, "Rating": "4",
                             "Rationale For Rating": str}},
         "critique": str, "overall_score": float, "fine-grained_score": float}, ...],
     "correct_answers": [...], "incorrect_answers": [...]}

``Rating`` is a string digit or ``"N/A"``; some dumps wrap an aspect in a one-element list,
which is accepted. ``fine-grained_score`` is the mean of the four aspect ratings (1-5),
``overall_score`` the critique model's 1-10 score.

Views (``UltraFeedbackOptions``)
--------------------------------
* paired: completions ranked by ``score`` (default ``"fine-grained_score"``; also
  ``"overall_score"`` or ``"mean_rating"``, the mean of the aspect ratings recomputed here);
  ``conversions.scores_to_pairs`` with ``pair_strategy`` (default best vs worst) and its tie
  rule: no pair unless strictly better by more than ``min_margin``; among ties the earlier
  completion wins. Prompts whose scores all tie are filtered (``no_score_margin``).
* binary: each completion thumbs-up iff its ``score >= thumbs_threshold`` (default 4.0 on the
  1-5 fine-grained scale), optional ambiguous band via ``thumbs_down_below``.
* feedback: each completion's ``critique`` as a ``"critique"`` FeedbackExample with
  ``score=overall_score``; with ``include_rationales`` also each aspect's rationale as a
  ``"rationale"`` example scored by that aspect's rating.

A completion with an empty response or no score (absent / ``"N/A"``) is left out of its prompt's
comparisons (counted as filtered ``empty_response`` / ``unscored_completion``). A score that is
not a number in its documented range (ratings and ``fine-grained_score`` 1-5, ``overall_score``
1-10; NaN, Infinity, a string ``"4"`` where a number belongs, 99) is a malformed *completion*
(``bad_score``): under ``on_error="raise"`` a ``file:line`` error, under ``"skip"`` the
completion is counted as skipped and the record's other completions still pair (scores
``[1, NaN, 5]`` give the pair 5 vs 1). Structural problems (missing/mistyped fields) make the
whole record malformed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import conversions
from fbjax.data import reading as rd
from fbjax.data.examples import (
    BinaryExample,
    Example,
    FeedbackExample,
    PairedExample,
    user_prompt,
)
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "ultrafeedback"
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
SCORE_FIELDS = ("fine-grained_score", "overall_score", "mean_rating")
VIEWS = ("paired", "binary", "feedback")
SOURCE_FILES = ("evol_instruct", "false_qa", "flan", "sharegpt", "truthful_qa", "ultrachat")


@dataclasses.dataclass(frozen=True)
class UltraFeedbackOptions:
    """How UltraFeedback's scores become pairs and thumbs (see module docstring)."""

    score: str = "fine-grained_score"
    pair_strategy: str = "best_vs_worst"
    min_margin: float = 0.0
    thumbs_threshold: float = 4.0
    thumbs_down_below: float | None = None
    include_rationales: bool = False

    def __post_init__(self) -> None:
        if self.score not in SCORE_FIELDS:
            raise ValueError(f"score must be one of {SCORE_FIELDS}, got {self.score!r}")
        if self.pair_strategy not in conversions.PAIR_STRATEGIES:
            raise ValueError(
                f"pair_strategy must be one of {conversions.PAIR_STRATEGIES}, "
                f"got {self.pair_strategy!r}"
            )


@dataclasses.dataclass(frozen=True)
class Completion:
    """One parsed UltraFeedback completion."""

    index: int
    model: str
    response: str
    ratings: Mapping[str, float | None]
    rationales: Mapping[str, str]
    critique: str
    overall_score: float | None
    fine_grained_score: float | None
    # Why a score of this completion is unusable (module docstring), or None.
    bad_score: str | None = None

    def score(self, field: str) -> float | None:
        if field == "overall_score":
            return self.overall_score
        if field == "fine-grained_score":
            return self.fine_grained_score
        rated = [r for r in self.ratings.values() if r is not None]
        return sum(rated) / len(rated) if rated else None


# The documented ranges (Cui et al. 2023, arXiv:2310.01377, and the release's dataset card):
# aspect ratings and their mean ``fine-grained_score`` on 1-5, the critique model's
# ``overall_score`` on 1-10. A value outside, not a number, or not finite is a bad score.
RATING_RANGE = (1.0, 5.0)
SCORE_RANGES = {"fine-grained_score": (1.0, 5.0), "overall_score": (1.0, 10.0)}
BAD_SCORE = "bad_score"


class _BadScore(Exception):
    """A completion's score that is not a number in its documented range."""


def _in_range(value: float, bounds: tuple[float, float], where: str, raw: Any) -> float:
    if not math.isfinite(value) or not bounds[0] <= value <= bounds[1]:
        raise _BadScore(f"{where} is {raw!r}, expected a number in [{bounds[0]:g}, {bounds[1]:g}]")
    return value


def _rating(value: Any, where: str) -> float | None:
    """An aspect ``Rating``: a digit string as released (or a number), ``"N/A"`` = unrated."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _BadScore(f"{where} is {type(value).__name__} {value!r}, expected a rating")
    try:
        number = float(value)
    except ValueError:
        raise _BadScore(f"{where} is not a rating: {value!r}") from None
    return _in_range(number, RATING_RANGE, where, value)


def _optional_number(c: Mapping[str, Any], key: str, where: str) -> float | None:
    """``overall_score`` / ``fine-grained_score``: a JSON number as released, or absent."""
    value = c.get(key)
    if value is None or value == "N/A":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadScore(f"{where}.{key} is {type(value).__name__} {value!r}, expected a number")
    return _in_range(float(value), SCORE_RANGES[key], f"{where}.{key}", value)


def parse_completion(c: Any, index: int) -> Completion:
    """Parses ``completions[index]``; raises ``Malformed`` on structural problems."""
    where = f"completions[{index}]"
    if not isinstance(c, dict):
        raise rd.Malformed(rd.WRONG_TYPE, f"{where} is {type(c).__name__}, expected object")
    try:
        response = rd.get_str(c, "response")
        model = rd.get_str(c, "model") if c.get("model") is not None else ""
        critique = rd.get_str(c, "critique") if c.get("critique") is not None else ""
        annotations = rd.get_dict(c, "annotations") if "annotations" in c else {}
    except rd.Malformed as m:
        raise rd.Malformed(m.reason, f"{where}: {m.detail}") from None
    ratings: dict[str, float | None] = {}
    rationales: dict[str, str] = {}
    bad_score: str | None = None
    for aspect in ASPECTS:
        value = annotations.get(aspect)
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        if value is None:
            ratings[aspect] = None
            continue
        if not isinstance(value, dict):
            raise rd.Malformed(rd.WRONG_TYPE, f"{where}.annotations.{aspect} is not an object")
        try:
            ratings[aspect] = _rating(value.get("Rating"), f"{where}.annotations.{aspect}.Rating")
        except _BadScore as e:
            ratings[aspect], bad_score = None, bad_score or str(e)
        rationale = value.get("Rationale For Rating") or value.get("Rationale") or ""
        if not isinstance(rationale, str):
            raise rd.Malformed(rd.WRONG_TYPE, f"{where}.annotations.{aspect}.Rationale not str")
        rationales[aspect] = rd.check_text(rationale, f"{where}.{aspect}.Rationale")
    scores: dict[str, float | None] = {}
    for key in SCORE_RANGES:
        try:
            scores[key] = _optional_number(c, key, where)
        except _BadScore as e:
            scores[key], bad_score = None, bad_score or str(e)
    return Completion(
        index=index,
        model=model,
        response=response.strip(),
        ratings=ratings,
        rationales=rationales,
        critique=critique.strip(),
        overall_score=scores["overall_score"],
        fine_grained_score=scores["fine-grained_score"],
        bad_score=bad_score,
    )


def parse_record(record: Mapping[str, Any]) -> tuple[str, list[Completion]]:
    """(instruction, completions) of one UltraFeedback line; raises ``Malformed``."""
    instruction = rd.get_str(record, "instruction").strip()
    if not instruction:
        raise rd.Malformed(rd.BAD_VALUE, "field 'instruction' is empty")
    raw = rd.get_list(record, "completions")
    return instruction, [parse_completion(c, i) for i, c in enumerate(raw)]


def convert_record(
    record: Mapping[str, Any], ctx: rd.RecordContext, *, view: str, options: UltraFeedbackOptions
) -> list[Example]:
    """One UltraFeedback line -> examples of ``view`` (paired, binary or feedback)."""
    instruction, completions = parse_record(record)
    prompt = user_prompt(instruction)
    source_name = record.get("source") if isinstance(record.get("source"), str) else ""
    base_meta = ctx.meta(SOURCE, dataset_source=source_name)

    usable = []
    for c in completions:
        if c.bad_score is not None:
            # A bad score is malformed data: an error under on_error="raise"; under "skip" the
            # completion is counted and left out, and the record's other completions are used.
            ctx.problem(BAD_SCORE, c.bad_score)
        elif not c.response:
            ctx.filter("empty_response")
        else:
            usable.append(c)

    if view == "feedback":
        out: list[Example] = []
        for c in usable:
            meta = {**base_meta, "model": c.model, "completion_index": c.index}
            if c.critique:
                out.append(
                    FeedbackExample(
                        prompt, c.response, c.critique, "critique", None, c.overall_score, meta
                    )
                )
            else:
                ctx.filter("no_critique")
            if options.include_rationales:
                for aspect, text in c.rationales.items():
                    if text.strip():
                        out.append(
                            FeedbackExample(
                                prompt,
                                c.response,
                                text.strip(),
                                "rationale",
                                None,
                                c.ratings.get(aspect),
                                {**meta, "aspect": aspect},
                            )
                        )
        return out

    scored = []
    for c in usable:
        s = c.score(options.score)
        if s is None:
            ctx.filter("unscored_completion")
        else:
            scored.append((c, s))

    if view == "binary":
        out = []
        for c, s in scored:
            meta = {**base_meta, "model": c.model, "completion_index": c.index}
            thumb = conversions.rating_to_thumb(
                prompt,
                c.response,
                s,
                threshold=options.thumbs_threshold,
                down_below=options.thumbs_down_below,
                meta=meta,
            )
            if thumb is None:
                ctx.filter("ambiguous_rating")
            else:
                out.append(thumb)
        return out

    if view != "paired":
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if len(scored) < 2:
        ctx.filter("fewer_than_two_scored")
        return []
    pairs = conversions.scores_to_pairs(
        prompt,
        [c.response for c, _ in scored],
        [s for _, s in scored],
        strategy=options.pair_strategy,
        min_margin=options.min_margin,
        meta={**base_meta, "score_field": options.score},
    )
    if not pairs:
        ctx.filter("no_score_margin")
    return pairs


def _converter(view: str, options: UltraFeedbackOptions | None):
    rd.check_choice("view", view, VIEWS)
    opts = options or UltraFeedbackOptions()
    return lambda r, c: convert_record(r, c, view=view, options=opts)


def iter_ultrafeedback(
    paths: rd.PathLike | Sequence[rd.PathLike],
    tally: rd.Tally,
    *,
    view: str = "paired",
    options: UltraFeedbackOptions | None = None,
) -> Iterator[Example]:
    """Streams ``view`` examples from original UltraFeedback jsonl files."""
    return rd.convert_records(paths, _converter(view, options), tally)


def read_ultrafeedback(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    view: str = "paired",
    options: UltraFeedbackOptions | None = None,
) -> rd.ReadResult[PairedExample | BinaryExample | FeedbackExample]:
    """Reads original UltraFeedback jsonl files as ``view`` examples (see module docstring)."""
    return rd.read_records(paths, _converter(view, options), config)


class FbjaxUltrafeedback(FeedbackBuilder):
    """UltraFeedback as preference pairs, thumbs (binary) or critiques (language feedback).

    The release has no splits; everything is ``train``.
    """

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://github.com/OpenBMB/UltraFeedback"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original openbmb/UltraFeedback jsonl files (evol_instruct.jsonl, false_qa.jsonl, "
        "flan.jsonl, sharegpt.jsonl, truthful_qa.jsonl, ultrachat.jsonl) into manual_dir; every "
        "*.jsonl there is read."
    )
    BUILDER_CONFIGS = [
        FeedbackConfig(name="paired", kind="paired", options={"view": "paired"}),
        FeedbackConfig(name="binary", kind="binary", options={"view": "binary"}),
        FeedbackConfig(name="feedback", kind="feedback", options={"view": "feedback"}),
    ]

    def manual_files(self, config):
        return {"train": ["*.jsonl"]}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_ultrafeedback(paths, tally, view=self.builder_config.options["view"])
