"""OpenAI "Learning to summarize from human feedback" (Stiennon et al. 2020) comparisons.

Original format
---------------
``summarize-from-feedback/dataset/comparisons/batch<N>.json`` (JSON lines despite the suffix;
TL;DR batches 3-20 and 22, CNN/DM batches in ``cnndm*.json``). Each line::

    {"info": {"id": "t3_2vwp1w", "post": str, "title": str, "subreddit": str},
     # CNN/DM records have {"id", "article", "title", "site"} instead of post/subreddit
     "summaries": [{"text": str, "policy": str, "note": str | null},
                   {"text": str, "policy": str, "note": str | null}],
     "choice": 0 | 1,                      # index of the preferred summary
     "worker": str, "batch": str,
     "split": "train" | "valid1" | "valid2",
     "extra": {"confidence": int | null}}

Conversion
----------
The prompt is one user turn in the paper's query format::

    SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\n\\nTL;DR:

(CNN/DM: ``"ARTICLE: {article}\\n\\nTL;DR:"``). Summary texts are stripped (the originals start
with a space). Records outside the requested release ``splits`` are counted as filtered
``other_split``. ``split`` ``valid1`` was used for model selection in the paper and ``valid2``
for final evaluation; the builder maps them to TFDS ``validation`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import PairedExample, user_prompt
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "tldr_comparisons"
RELEASE_SPLITS = ("train", "valid1", "valid2")
TLDR_BATCHES = tuple(f"batch{i}" for i in range(3, 21)) + ("batch22",)
TFDS_SPLITS = {"train": ("train",), "validation": ("valid1",), "test": ("valid2",)}


def format_query(info: Mapping[str, Any]) -> str:
    """The summarisation query for a post (or article); raises ``Malformed``."""
    if "post" in info and info.get("post") is not None:
        post = rd.get_str(info, "post").strip()
        title = rd.get_str(info, "title").strip()
        subreddit = rd.get_str(info, "subreddit").strip()
        if not post:
            raise rd.Malformed(rd.BAD_VALUE, "info.post is empty")
        return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\n\nTL;DR:"
    if "article" in info and info.get("article") is not None:
        article = rd.get_str(info, "article").strip()
        if not article:
            raise rd.Malformed(rd.BAD_VALUE, "info.article is empty")
        return f"ARTICLE: {article}\n\nTL;DR:"
    raise rd.Malformed(rd.MISSING_FIELD, "info has neither 'post' nor 'article'")


def convert_record(
    record: Mapping[str, Any], ctx: rd.RecordContext, *, splits: Sequence[str] | None = None
) -> list[PairedExample]:
    """One comparison line -> one ``PairedExample`` (or none if outside ``splits``)."""
    split = rd.get_str(record, "split")
    if split not in RELEASE_SPLITS:
        raise rd.Malformed(rd.BAD_VALUE, f"field 'split' is {split!r}")
    if splits is not None and split not in splits:
        ctx.filter("other_split")
        return []
    info = rd.get_dict(record, "info")
    try:
        query = format_query(info)
    except rd.Malformed as m:
        raise rd.Malformed(m.reason, f"info: {m.detail}") from None
    summaries = rd.get_list(record, "summaries")
    if len(summaries) != 2:
        raise rd.Malformed(rd.BAD_VALUE, f"expected 2 summaries, got {len(summaries)}")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise rd.Malformed(rd.WRONG_TYPE, f"summaries[{i}] is not an object")
        try:
            texts.append(rd.completion_text(s, "text"))
        except rd.Malformed as m:
            raise rd.Malformed(m.reason, f"summaries[{i}]: {m.detail}") from None
    choice = rd.get_int(record, "choice")
    if choice not in (0, 1):
        raise rd.Malformed(rd.BAD_VALUE, f"field 'choice' is {choice}, expected 0 or 1")
    rd.check_distinct(texts[choice], texts[1 - choice])
    extra = record.get("extra") if isinstance(record.get("extra"), dict) else {}
    confidence = extra.get("confidence")

    def policy(i: int) -> str:
        p = summaries[i].get("policy")
        return p if isinstance(p, str) else ""

    meta = ctx.meta(
        SOURCE,
        id=info.get("id") if isinstance(info.get("id"), str) else "",
        split=split,
        batch=record.get("batch") if isinstance(record.get("batch"), str) else "",
        worker=record.get("worker") if isinstance(record.get("worker"), str) else "",
        confidence=confidence if isinstance(confidence, (int, float)) else None,
        chosen_policy=policy(choice),
        rejected_policy=policy(1 - choice),
    )
    return [PairedExample(user_prompt(query), texts[choice], texts[1 - choice], 1.0, meta)]


def iter_tldr_comparisons(
    paths: rd.PathLike | Sequence[rd.PathLike],
    tally: rd.Tally,
    *,
    splits: Sequence[str] | None = None,
) -> Iterator[PairedExample]:
    """Streams pairs from original comparison batch files, keeping release ``splits``."""
    return rd.convert_records(paths, lambda r, c: convert_record(r, c, splits=splits), tally)


def read_tldr_comparisons(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    splits: Sequence[str] | None = None,
) -> rd.ReadResult[PairedExample]:
    """Reads original ``comparisons/batch*.json`` files into pairs."""
    return rd.read_records(paths, lambda r, c: convert_record(r, c, splits=splits), config)


class FbjaxTldrComparisons(FeedbackBuilder):
    """Reddit TL;DR summary comparisons from summarize-from-feedback (train/valid1/valid2)."""

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://github.com/openai/summarize-from-feedback"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original comparisons/batch*.json files (TL;DR batches 3-20 and 22) into "
        "manual_dir; every batch*.json there is read."
    )
    BUILDER_CONFIGS = [FeedbackConfig(name="paired", kind="paired")]

    def manual_files(self, config):
        return {split: ["batch*.json"] for split in TFDS_SPLITS}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_tldr_comparisons(paths, tally, splits=TFDS_SPLITS[split])
