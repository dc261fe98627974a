"""PKU-SafeRLHF (Ji et al. 2023/2024): helpfulness/safety pairs and unsafe-only negatives.

Original format
---------------
``PKU-Alignment/PKU-SafeRLHF`` JSON-lines files: ``data/<generator>/{train,test}.jsonl`` for
generators ``Alpaca-7B``, ``Alpaca2-7B``, ``Alpaca3-8B`` (the 2024 release; the 2023
``round0/{train,test}.jsonl.xz`` files share the core fields). Each line::

    {"prompt": str, "response_0": str, "response_1": str,
     "is_response_0_safe": bool, "is_response_1_safe": bool,
     "better_response_id": 0 | 1,          # more helpful
     "safer_response_id": 0 | 1,           # safer
     # 2024 release only (kept in meta when present):
     "prompt_source": str, "response_0_source": str, "response_1_source": str,
     "response_0_severity_level": int, "response_1_severity_level": int,
     "response_0_harm_category": {...}, "response_1_harm_category": {...}, ...}

Views
-----
* ``"better"``: pairs by ``better_response_id`` (helpfulness preference);
* ``"safer"``: pairs by ``safer_response_id`` (harmlessness preference);
* ``"negative"``: every response with ``is_response_k_safe == false`` as a
  ``NegativeExample`` (negative-only feedback). Records with no unsafe response are counted as
  filtered ``no_unsafe_response``.
The prompt is a single user turn.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from fbjax.data import reading as rd
from fbjax.data.examples import Example, NegativeExample, PairedExample, user_prompt
from fbjax.data.tfds_common import FeedbackBuilder, FeedbackConfig

SOURCE = "pku_saferlhf"
VIEWS = ("better", "safer", "negative")
GENERATORS = ("Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B")


def _response_id(record: Mapping[str, Any], key: str) -> int:
    value = rd.get_int(record, key)
    if value not in (0, 1):
        raise rd.Malformed(rd.BAD_VALUE, f"field {key!r} is {value}, expected 0 or 1")
    return value


def _optional_meta(record: Mapping[str, Any], key: str) -> Any:
    value = record.get(key)
    return value if isinstance(value, (str, int, float, bool)) else None


def convert_record(record: Mapping[str, Any], ctx: rd.RecordContext, *, view: str) -> list[Example]:
    """One PKU-SafeRLHF line -> a pair (``"better"``/``"safer"``) or unsafe negatives."""
    prompt_text = rd.get_str(record, "prompt").strip()
    if not prompt_text:
        raise rd.Malformed(rd.BAD_VALUE, "field 'prompt' is empty")
    responses = (rd.completion_text(record, "response_0"), rd.completion_text(record, "response_1"))
    safe = (rd.get_bool(record, "is_response_0_safe"), rd.get_bool(record, "is_response_1_safe"))
    better = _response_id(record, "better_response_id")
    safer = _response_id(record, "safer_response_id")
    rd.check_distinct(*responses)
    prompt = user_prompt(prompt_text)
    meta = ctx.meta(
        SOURCE,
        prompt_source=_optional_meta(record, "prompt_source"),
        is_response_0_safe=safe[0],
        is_response_1_safe=safe[1],
        better_response_id=better,
        safer_response_id=safer,
    )
    if view == "negative":
        out: list[Example] = []
        for k in (0, 1):
            if not safe[k]:
                out.append(
                    NegativeExample(
                        prompt,
                        responses[k],
                        {
                            **meta,
                            "response_id": k,
                            "severity_level": _optional_meta(
                                record, f"response_{k}_severity_level"
                            ),
                            "response_source": _optional_meta(record, f"response_{k}_source"),
                        },
                    )
                )
        if not out:
            ctx.filter("no_unsafe_response")
        return out
    if view not in ("better", "safer"):
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    win = better if view == "better" else safer
    return [PairedExample(prompt, responses[win], responses[1 - win], 1.0, {**meta, "axis": view})]


def _converter(view: str):
    rd.check_choice("view", view, VIEWS)
    return lambda r, c: convert_record(r, c, view=view)


def iter_pku_saferlhf(
    paths: rd.PathLike | Sequence[rd.PathLike], tally: rd.Tally, *, view: str = "safer"
) -> Iterator[Example]:
    """Streams ``view`` examples from original PKU-SafeRLHF files."""
    return rd.convert_records(paths, _converter(view), tally)


def read_pku_saferlhf(
    paths: rd.PathLike | Sequence[rd.PathLike],
    config: rd.ReadConfig | None = None,
    *,
    view: str = "safer",
) -> rd.ReadResult[PairedExample | NegativeExample]:
    """Reads original PKU-SafeRLHF jsonl(.xz) files as ``view`` examples."""
    return rd.read_records(paths, _converter(view), config)


class FbjaxPkuSaferlhf(FeedbackBuilder):
    """PKU-SafeRLHF pairs (by helpfulness or by safety) and unsafe-only negatives."""

    VERSION = tfds.core.Version("1.0.0")
    HOMEPAGE = "https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the original release so that manual_dir/data/<generator>/{train,test}.jsonl exist "
        f"(generators {', '.join(GENERATORS)}); all generators found are read."
    )
    BUILDER_CONFIGS = [
        FeedbackConfig(name="safer", kind="paired", options={"view": "safer"}),
        FeedbackConfig(name="better", kind="paired", options={"view": "better"}),
        FeedbackConfig(name="negative", kind="negative", options={"view": "negative"}),
    ]

    def manual_files(self, config):
        return {split: [f"data/*/{split}.jsonl"] for split in ("train", "test")}

    def read_split(self, split, paths: Sequence[Path], tally):
        return iter_pku_saferlhf(paths, tally, view=self.builder_config.options["view"])
