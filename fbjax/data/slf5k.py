"""SLF5K (Scheurer et al. 2023, "Training Language Models with Language Feedback at Scale").

Original format (assumed; see below)
------------------------------------
``JeremyAlain/SLF5K``: ``train.jsonl``, ``development.jsonl``, ``validation.jsonl``,
``test.jsonl``, one Reddit post per line. The fields this reader uses::

    {"id": str, "subreddit": str, "title": str, "post": str,
     "generated_summary_for_feedback": str,    # model (FeedME) summary that got feedback
     "feedback": str,                          # human language feedback on that summary
     "feedback_class": str,                    # e.g. "Coverage", "Accuracy", ...
     "ideal_human_summary": str,               # human gold summary written for the post
     "generated_summary_for_comparison_A": str,
     "generated_summary_for_comparison_B": str,
     "comparison_preference": "Summary A" | "Summary B",
     "tldr_human_reference_summary": str, ...}

The release ships these as a HF loading script plus jsonl; the field names above were checked
against code that consumes the release (``generated_summary_for_feedback``, ``feedback``,
``feedback_class``, ``ideal_human_summary``), while the comparison fields and the exact
``comparison_preference`` values could not be verified offline and are assumptions: a value
other than ``"Summary A"``/``"Summary B"`` (or ``"A"``/``"B"``) is reported as malformed
(``bad_value``) rather than guessed.

Views
-----
* ``"feedback"``: ``FeedbackExample(kind="critique")`` on ``generated_summary_for_feedback``,
  with ``refinement=ideal_human_summary`` (the human summary ILF's refinements aim at) when
  present. Lines without feedback (e.g. evaluation-only splits) are filtered ``no_feedback``.
* ``"paired"``: the binary comparison between the two ``generated_summary_for_comparison_*``;
  lines without them are filtered ``no_comparison``.
The prompt is the TL;DR query of ``fbjax.data.tldr_comparisons.format_query``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import Example, FeedbackExample, PairedExample, user_prompt
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig
from fbjax.data.tldr_comparisons import format_query

SOURCE = "slf5k"
VIEWS = ("feedback", "paired")
SPLIT_FILES = {
    "train": "train.jsonl",
    "development": "development.jsonl",
    "validation": "validation.jsonl",
    "test": "test.jsonl",
}
_PREFERENCE = {"summary a": 0, "a": 0, "summary b": 1, "b": 1}


def _present(record: Mapping[str, Any], key: str) -> bool:
    value = record.get(key)
    return isinstance(value, str) and bool(value.strip())


def convert_record(record: Mapping[str, Any], ctx: rd.RecordContext, *, view: str) -> list[Example]:
    """One SLF5K line -> a critique ``FeedbackExample`` or a comparison ``PairedExample``."""
    query = format_query(record)
    prompt = user_prompt(query)
    sample_id = record.get("id") if isinstance(record.get("id"), str) else ""
    if view == "feedback":
        if record.get("feedback") is None or not _present(record, "feedback"):
            # Still type-check a present-but-wrong value instead of filtering it.
            if record.get("feedback") is not None:
                rd.get_str(record, "feedback")
            ctx.filter("no_feedback")
            return []
        feedback = rd.get_str(record, "feedback").strip()
        summary = rd.completion_text(record, "generated_summary_for_feedback")
        refinement = (
            rd.get_str(record, "ideal_human_summary").strip()
            if _present(record, "ideal_human_summary")
            else None
        )
        feedback_class = record.get("feedback_class")
        meta = ctx.meta(
            SOURCE,
            id=sample_id,
            feedback_class=feedback_class if isinstance(feedback_class, str) else "",
        )
        return [FeedbackExample(prompt, summary, feedback, "critique", refinement, None, meta)]
    if view != "paired":
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    keys = ("generated_summary_for_comparison_A", "generated_summary_for_comparison_B")
    if record.get(keys[0]) is None and record.get(keys[1]) is None:
        ctx.filter("no_comparison")
        return []
    summaries = [rd.completion_text(record, k) for k in keys]
    preference = rd.get_str(record, "comparison_preference")
    choice = _PREFERENCE.get(preference.strip().lower())
    if choice is None:
        raise rd.Malformed(rd.BAD_VALUE, f"field 'comparison_preference' is {preference!r}")
    rd.check_distinct(summaries[choice], summaries[1 - choice])
    meta = ctx.meta(SOURCE, id=sample_id)
    return [PairedExample(prompt, summaries[choice], summaries[1 - choice], 1.0, meta)]


def _converter(view: str):
    rd.check_choice("view", view, VIEWS)
    return lambda r, c: convert_record(r, c, view=view)


def iter_slf5k(
    paths: rd.PathLike | Sequence[rd.PathLike], tally: rd.Tally, *, view: str = "feedback"
) -> Iterator[Example]:
    """Streams ``view`` examples from original SLF5K jsonl files."""
    return rd.convert_records(paths, _converter(view), tally)


def read_slf5k(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    view: str = "feedback",
) -> rd.ReadResult[FeedbackExample | PairedExample]:
    """Reads original SLF5K jsonl files as ``view`` examples (see module docstring)."""
    return rd.read_records(paths, _converter(view), config)


class FbjaxSlf5k(FeedbackBuilder):
    """SLF5K summarisation with human language feedback (critiques) and binary comparisons."""

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://huggingface.co/datasets/JeremyAlain/SLF5K"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original SLF5K files train.jsonl, development.jsonl, validation.jsonl and "
        "test.jsonl into manual_dir."
    )
    BUILDER_CONFIGS = [
        FeedbackConfig(name="feedback", kind="feedback", options={"view": "feedback"}),
        FeedbackConfig(name="paired", kind="paired", options={"view": "paired"}),
    ]

    def manual_files(self, config):
        return {split: [file] for split, file in SPLIT_FILES.items()}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_slf5k(paths, tally, view=self.builder_config.options["view"])
