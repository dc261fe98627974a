"""Anthropic HH-RLHF (Bai et al. 2022) preference pairs.

Original format
---------------
``<subset>/{train,test}.jsonl.gz`` from https://github.com/anthropics/hh-rlhf (mirrored at
huggingface.co/datasets/Anthropic/hh-rlhf), subsets ``harmless-base``, ``helpful-base``,
``helpful-online`` and ``helpful-rejection-sampled``. One JSON object per line::

    {"chosen":   "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <reply A>",
     "rejected": "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <reply B>"}

Both are full transcripts that share every turn except the final assistant reply.

Splitting rule
--------------
Each transcript is cut at its last ``"\\n\\nAssistant:"``; the part before (with the marker) is
the prompt, the rest the reply. When the two prompts differ, a few records are still genuine:
the model wrote turn markers inside its final reply (e.g. ``"... Human: ...\\n\\nAssistant:
..."``), so one transcript's last marker lies *inside* its reply. The shorter prompt is then
the shared one if both transcripts start with it; the longer reply keeps the inner markers
verbatim (counted as the note ``reply_contains_turn_marker``). Otherwise the record is
malformed (``prompt_mismatch``). Replies are stripped of surrounding whitespace; an empty
reply is ``empty_completion``, equal replies ``identical_completions``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import ASSISTANT, USER, PairedExample, Prompt, parse_transcript
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "hh_rlhf"
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")

_MARKER = "\n\nAssistant:"


def split_pair(chosen: str, rejected: str) -> tuple[Prompt, str, str, bool]:
    """Splits two HH transcripts into (shared prompt, chosen reply, rejected reply, repaired).

    ``repaired`` is True when the shorter-prompt rule of the module docstring was needed.
    Raises ``Malformed`` (``unparseable_transcript``, ``prompt_mismatch``,
    ``empty_completion``, ``identical_completions``).
    """
    cuts = []
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        k = text.rfind(_MARKER)
        if k < 0:
            raise rd.Malformed(rd.UNPARSEABLE_TRANSCRIPT, f"{name} has no '\\n\\nAssistant:' turn")
        cuts.append(text[: k + len(_MARKER)])
    prompt_text, repaired = cuts[0], False
    if cuts[0] != cuts[1]:
        shorter = min(cuts, key=len)
        if not (chosen.startswith(shorter) and rejected.startswith(shorter)):
            raise rd.Malformed(
                rd.PROMPT_MISMATCH, "chosen and rejected transcripts differ before the final reply"
            )
        prompt_text, repaired = shorter, True
    chosen_reply = chosen[len(prompt_text) :].strip()
    rejected_reply = rejected[len(prompt_text) :].strip()
    for name, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
        if not reply:
            raise rd.Malformed(rd.EMPTY_COMPLETION, f"{name} final assistant reply is empty")
    rd.check_distinct(chosen_reply, rejected_reply)

    try:
        turns = parse_transcript(prompt_text)
    except ValueError as e:
        raise rd.Malformed(rd.UNPARSEABLE_TRANSCRIPT, str(e)) from None
    # parse_transcript keeps the open final marker as an empty assistant turn; drop it.
    if turns[-1] != (ASSISTANT, ""):
        raise rd.Malformed(rd.UNPARSEABLE_TRANSCRIPT, "prompt does not end with an open reply")
    turns = turns[:-1]
    if not turns or turns[-1][0] != USER:
        raise rd.Malformed(
            rd.UNPARSEABLE_TRANSCRIPT, "final assistant reply does not follow a human turn"
        )
    if any(not text for _, text in turns):
        raise rd.Malformed(rd.UNPARSEABLE_TRANSCRIPT, "a prompt turn is empty")
    return turns, chosen_reply, rejected_reply, repaired


def convert_record(
    record: Mapping[str, Any], ctx: rd.RecordContext, *, subset: str | None = None
) -> list[PairedExample]:
    """One HH-RLHF line -> one ``PairedExample``."""
    chosen = rd.get_str(record, "chosen")
    rejected = rd.get_str(record, "rejected")
    if chosen == rejected:
        raise rd.Malformed(
            rd.IDENTICAL_COMPLETIONS, "chosen and rejected transcripts are identical"
        )
    prompt, chosen_reply, rejected_reply, repaired = split_pair(chosen, rejected)
    if repaired:
        ctx.note("reply_contains_turn_marker")
    meta = ctx.meta(SOURCE, subset=subset or "")
    return [PairedExample(prompt, chosen_reply, rejected_reply, 1.0, meta)]


def iter_hh_rlhf(
    paths: rd.PathLike | Sequence[rd.PathLike], tally: rd.Tally, *, subset: str | None = None
) -> Iterator[PairedExample]:
    """Streams pairs from original HH-RLHF files, counting into ``tally``."""
    return rd.convert_records(paths, lambda r, c: convert_record(r, c, subset=subset), tally)


def read_hh_rlhf(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    subset: str | None = None,
) -> rd.ReadResult[PairedExample]:
    """Reads original HH-RLHF ``*.jsonl(.gz)`` files into pairs (see module docstring)."""
    return rd.read_records(paths, lambda r, c: convert_record(r, c, subset=subset), config)


class FbjaxHhRlhf(FeedbackBuilder):
    """Anthropic HH-RLHF helpful/harmless preference pairs, from the original jsonl.gz files."""

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original release so that manual_dir/<subset>/{train,test}.jsonl.gz exist, "
        f"for subsets {', '.join(SUBSETS)} (the layout of github.com/anthropics/hh-rlhf)."
    )
    BUILDER_CONFIGS = [
        FeedbackConfig(name=s.replace("-", "_"), kind="paired", options={"subset": s})
        for s in SUBSETS
    ]

    def manual_files(self, config):
        subset = config.options["subset"]
        return {split: [f"{subset}/{split}.jsonl.gz"] for split in SPLITS}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_hh_rlhf(paths, tally, subset=self.builder_config.options["subset"])
