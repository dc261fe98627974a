"""Stanford Human Preferences (SHP, Ethayarajh et al. 2022): Reddit comment pairs with weights.

Original format
---------------
``stanfordnlp/SHP``: one folder per subreddit domain, each with ``train.json``,
``validation.json`` and ``test.json`` in JSON-lines form despite the suffix. Each line::

    {"post_id": str, "domain": "askculinary_train", "upvote_ratio": float,
     "history": str,                       # the post (title + body): the prompt
     "c_root_id_A": str, "c_root_id_B": str,
     "created_at_utc_A": int, "created_at_utc_B": int,
     "score_A": int, "score_B": int,
     "human_ref_A": str, "human_ref_B": str,   # the two top-level comments
     "labels": 1 | 0,                      # 1: A is preferred, 0: B is preferred
     "seconds_difference": float, "score_ratio": float}   # ratio = max score / min score

Weights
-------
``weighting="vote_share"`` (default) gives ``weight = r / (1 + r)`` with ``r = score_ratio``,
the preferred comment's share of the two scores: in [0.5, 1), so near-ties count about half
as much as lopsided pairs. ``"uniform"`` gives 1.0, ``"log_ratio"`` gives ``ln(r)``.
``score_ratio`` must be the ratio the two scores give (``max / min`` of ``score_A`` and
``score_B``, both positive, as the release defines it); any other value is ``bad_value``.
``min_score_ratio`` drops pairs below a ratio (the SHP authors suggest 2 for training), counted
as filtered ``below_min_score_ratio``. A label that disagrees with the scores is only noted
(``label_disagrees_with_scores``): the label is what annotators of the release defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import PairedExample, user_prompt
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "shp"
WEIGHTINGS = ("vote_share", "uniform", "log_ratio")
DOMAINS = (
    "askacademia", "askanthropology", "askbaking", "askcarguys", "askculinary", "askdocs",
    "askengineers", "askhistorians", "askhr", "askphilosophy", "askphysics", "askscience",
    "asksciencefiction", "asksocialscience", "askvet", "changemyview", "explainlikeimfive",
    "legaladvice",
)  # fmt: skip
SPLIT_FILES = {"train": "train.json", "validation": "validation.json", "test": "test.json"}


def pair_weight(score_ratio: float, weighting: str) -> float:
    """The loss weight of a pair with ``score_ratio`` (see module docstring)."""
    if weighting == "uniform":
        return 1.0
    if weighting == "vote_share":
        return score_ratio / (1.0 + score_ratio)
    if weighting == "log_ratio":
        return math.log(score_ratio)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def convert_record(
    record: Mapping[str, Any],
    ctx: rd.RecordContext,
    *,
    weighting: str = "vote_share",
    min_score_ratio: float = 1.0,
) -> list[PairedExample]:
    """One SHP line -> one weighted ``PairedExample`` (or none if below ``min_score_ratio``)."""
    history = rd.get_str(record, "history").strip()
    if not history:
        raise rd.Malformed(rd.BAD_VALUE, "field 'history' is empty")
    ref_a = rd.completion_text(record, "human_ref_A")
    ref_b = rd.completion_text(record, "human_ref_B")
    label = rd.get_int(record, "labels")
    if label not in (0, 1):
        raise rd.Malformed(rd.BAD_VALUE, f"field 'labels' is {label}, expected 0 or 1")
    score_a = rd.get_int(record, "score_A")
    score_b = rd.get_int(record, "score_B")
    ratio = rd.get_float(record, "score_ratio")
    if ratio < 1.0:
        raise rd.Malformed(rd.BAD_VALUE, f"field 'score_ratio' is {ratio}, expected >= 1")
    # The release defines score_ratio as the higher comment score over the lower one; a ratio
    # that the two scores do not give (1e300 for scores 12 and 3) is corrupt, not a strong pair.
    low, high = sorted((score_a, score_b))
    if low > 0 and not math.isclose(ratio, high / low, rel_tol=1e-6):
        raise rd.Malformed(rd.BAD_VALUE, f"field 'score_ratio' is {ratio}, but the scores "
                                         f"{score_a} and {score_b} give {high / low:g}")
    if low <= 0:
        raise rd.Malformed(rd.BAD_VALUE, f"scores {score_a} and {score_b}: SHP comments have "
                                         "positive scores (the ratio needs a positive lower one)")
    chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
    rd.check_distinct(chosen, rejected)
    if (score_a > score_b) != (label == 1):
        ctx.note("label_disagrees_with_scores")
    if ratio < min_score_ratio:
        ctx.filter("below_min_score_ratio")
        return []
    domain = record.get("domain") if isinstance(record.get("domain"), str) else ""
    post_id = record.get("post_id") if isinstance(record.get("post_id"), str) else ""
    meta = ctx.meta(
        SOURCE,
        post_id=post_id,
        domain=domain,
        score_ratio=ratio,
        chosen_score=score_a if label == 1 else score_b,
        rejected_score=score_b if label == 1 else score_a,
    )
    return [
        PairedExample(user_prompt(history), chosen, rejected, pair_weight(ratio, weighting), meta)
    ]


def _converter(weighting: str, min_score_ratio: float):
    rd.check_choice("weighting", weighting, WEIGHTINGS)
    return lambda r, c: convert_record(r, c, weighting=weighting, min_score_ratio=min_score_ratio)


def iter_shp(
    paths: rd.PathLike | Sequence[rd.PathLike],
    tally: rd.Tally,
    *,
    weighting: str = "vote_share",
    min_score_ratio: float = 1.0,
) -> Iterator[PairedExample]:
    """Streams weighted pairs from original SHP files."""
    return rd.convert_records(paths, _converter(weighting, min_score_ratio), tally)


def read_shp(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    weighting: str = "vote_share",
    min_score_ratio: float = 1.0,
) -> rd.ReadResult[PairedExample]:
    """Reads original SHP ``<domain>/<split>.json`` files into weighted pairs."""
    return rd.read_records(paths, _converter(weighting, min_score_ratio), config)


class FbjaxShp(FeedbackBuilder):
    """Stanford SHP preference pairs weighted by the comments' score ratio (all domains)."""

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://huggingface.co/datasets/stanfordnlp/SHP"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original stanfordnlp/SHP release so that manual_dir/<domain>/"
        "{train,validation,test}.json exist (one folder per subreddit domain)."
    )
    BUILDER_CONFIGS = [
        FeedbackConfig(name="vote_share", kind="paired", options={"weighting": "vote_share"}),
        FeedbackConfig(name="uniform", kind="paired", options={"weighting": "uniform"}),
    ]

    def manual_files(self, config):
        return {split: [f"*/{file}"] for split, file in SPLIT_FILES.items()}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_shp(paths, tally, weighting=self.builder_config.options["weighting"])
