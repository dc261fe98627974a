"""OpenAssistant OASST1 (Köpf et al. 2023): ranked sibling replies from the message trees.

Original format
---------------
``2023-04-12_oasst_ready.trees.jsonl.gz`` from ``OpenAssistant/oasst1``: one conversation tree
per line::

    {"message_tree_id": str, "tree_state": "ready_for_export",
     "prompt": <message>}

    <message> = {"message_id": str, "parent_id": str | null, "text": str,
                 "role": "prompter" | "assistant", "lang": "en", "rank": int | null,
                 "deleted": bool, "review_result": bool | null, "synthetic": bool,
                 "replies": [<message>, ...], ...}

``rank`` orders sibling assistant replies, 0 = best; it is null where a reply was not ranked.

Conversion
----------
Every prompter message with at least two ranked, non-deleted assistant replies gives a
``RankedExample``: the prompt is the conversation path from the root to that message
(prompter -> ``"user"``, assistant -> ``"assistant"``), completions are the ranked replies
best first, and ``scores`` are the negated ranks (best = 0.0) so higher is better. Unranked,
deleted and empty replies, other languages (``languages=``) and trees not in state
``ready_for_export`` are filtered and counted. Ranks that repeat among siblings are noted
(``tied_rank``); ties keep file order. Messages with a missing/mistyped ``role``/``text``, or a
conversation that does not alternate, make the whole tree malformed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import ASSISTANT, USER, RankedExample
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "oasst1"
TREES_FILE = "2023-04-12_oasst_ready.trees.jsonl.gz"
URL = f"https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/main/{TREES_FILE}"
_ROLES = {"prompter": USER, "assistant": ASSISTANT}


def _message(node: Any, path: str) -> tuple[str, str, list, dict]:
    """(role, text, replies, node) of a message, validated."""
    if not isinstance(node, dict):
        raise rd.Malformed(rd.WRONG_TYPE, f"{path} is {type(node).__name__}, expected object")
    try:
        role_raw = rd.get_str(node, "role")
        text = rd.get_str(node, "text").strip()
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise rd.Malformed(rd.WRONG_TYPE, "field 'replies' is not a list")
    except rd.Malformed as m:
        raise rd.Malformed(m.reason, f"{path}: {m.detail}") from None
    if role_raw not in _ROLES:
        raise rd.Malformed(rd.BAD_VALUE, f"{path}: unknown role {role_raw!r}")
    return _ROLES[role_raw], text, replies, node


def _rank(node: Mapping[str, Any], path: str) -> int | None:
    rank = node.get("rank")
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != int(rank):
        raise rd.Malformed(rd.WRONG_TYPE, f"{path}.rank is {rank!r}, expected int or null")
    return int(rank)


def convert_tree(
    record: Mapping[str, Any],
    ctx: rd.RecordContext,
    *,
    languages: Sequence[str] | None = None,
) -> list[RankedExample]:
    """One tree line -> one ``RankedExample`` per prompter message with >= 2 ranked replies."""
    tree_id = rd.get_str(record, "message_tree_id")
    state = record.get("tree_state", "ready_for_export")
    if state != "ready_for_export":
        ctx.filter("tree_not_ready")
        return []
    root = rd.require(record, "prompt")
    out: list[RankedExample] = []
    # Depth-first with an explicit stack: OASST threads can be deep.
    stack: list[tuple[Any, tuple[tuple[str, str], ...], str]] = [(root, (), "prompt")]
    while stack:
        node, history, path = stack.pop()
        role, text, replies, raw = _message(node, path)
        expected = USER if len(history) % 2 == 0 else ASSISTANT
        if role != expected:
            raise rd.Malformed(
                rd.UNPARSEABLE_TRANSCRIPT, f"{path}: {role} message where {expected} expected"
            )
        if raw.get("deleted") is True:
            # A deleted message's subtree is not part of the released conversations.
            continue
        if not text:
            ctx.filter("empty_message")
            continue
        turns = history + ((role, text),)
        children = [(child, f"{path}.replies[{i}]") for i, child in enumerate(replies)]
        # Push in reverse so the walk visits replies in file order (deterministic output).
        for child, child_path in reversed(children):
            stack.append((child, turns, child_path))
        if role != USER:
            continue
        lang = raw.get("lang")
        if languages is not None and lang not in languages:
            ctx.filter("other_language")
            continue
        ranked: list[tuple[int, int, str]] = []
        for i, (child, child_path) in enumerate(children):
            c_role, c_text, _, c_raw = _message(child, child_path)
            if c_role != ASSISTANT:
                continue  # reported as malformed when the walk reaches it
            rank = _rank(c_raw, child_path)
            if c_raw.get("deleted") is True:
                ctx.filter("deleted_reply")
            elif rank is None:
                ctx.filter("unranked_reply")
            elif not c_text:
                ctx.filter("empty_reply")
            else:
                ranked.append((rank, i, c_text))
        if len(ranked) < 2:
            if replies:
                ctx.filter("fewer_than_two_ranked")
            continue
        ranked.sort()
        ranks = [r for r, _, _ in ranked]
        if len(set(ranks)) != len(ranks):
            ctx.note("tied_rank")
        meta = ctx.meta(
            SOURCE,
            message_tree_id=tree_id,
            message_id=raw.get("message_id") if isinstance(raw.get("message_id"), str) else "",
            lang=lang if isinstance(lang, str) else "",
        )
        out.append(
            RankedExample(
                turns,
                tuple(t for _, _, t in ranked),
                tuple(-float(r) for r in ranks),
                meta,
            )
        )
    return out


def iter_oasst1(
    paths: rd.PathLike | Sequence[rd.PathLike],
    tally: rd.Tally,
    *,
    languages: Sequence[str] | None = None,
) -> Iterator[RankedExample]:
    """Streams ranked examples from the original OASST1 trees file(s)."""
    return rd.convert_records(paths, lambda r, c: convert_tree(r, c, languages=languages), tally)


def read_oasst1(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    languages: Sequence[str] | None = None,
) -> rd.ReadResult[RankedExample]:
    """Reads original OASST1 ``*.trees.jsonl(.gz)`` files into ranked examples."""
    return rd.read_records(paths, lambda r, c: convert_tree(r, c, languages=languages), config)


class FbjaxOasst1(FeedbackBuilder):
    """OpenAssistant OASST1 ranked replies (all languages, or English only), as one split.

    The trees file carries no train/validation split (that split lives in the HF parquet
    conversion), so everything is ``train``; split downstream by ``message_tree_id``.
    """

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://huggingface.co/datasets/OpenAssistant/oasst1"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Copy the original {TREES_FILE} into manual_dir."
    BUILDER_CONFIGS = [
        FeedbackConfig(name="all", kind="ranked", options={"languages": None}),
        FeedbackConfig(name="en", kind="ranked", options={"languages": ("en",)}),
    ]

    def manual_files(self, config):
        return {"train": [TREES_FILE]}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_oasst1(paths, tally, languages=self.builder_config.options["languages"])
