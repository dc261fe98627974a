"""Malformed records and damaged files, for every reader: each case gives a one-line
``file:line: reason`` error (``file: reason`` for a whole-file problem) under
``on_error="raise"``, and under ``"skip"`` a skip counted for that file, the good records kept.

Also the score rules: a NaN score never becomes "chosen", two NaN scores never make a pair, and in
scores [1, NaN, 5] the valid pair (5 vs 1) is kept.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import math

import pytest

from fbjax.data import (
    conversions,
    hh_rlhf,
    oasst1,
    pku_saferlhf,
    shp,
    slf5k,
    tldr_comparisons,
    ultrafeedback,
)
from fbjax.data.examples import user_prompt
from fbjax.data.reading import DataError, ReadConfig
from tests.data import test_datasets as fx
from tests.data.helpers import hh, write_jsonl

READERS = {
    "hh": lambda p, c: hh_rlhf.read_hh_rlhf(p, c),
    "uf": lambda p, c: ultrafeedback.read_ultrafeedback(p, c, view="paired"),
    "shp": lambda p, c: shp.read_shp(p, c),
    "pku": lambda p, c: pku_saferlhf.read_pku_saferlhf(p, c),
    "tldr": lambda p, c: tldr_comparisons.read_tldr_comparisons(p, c),
    "slf": lambda p, c: slf5k.read_slf5k(p, c, view="paired"),
    "oasst": lambda p, c: oasst1.read_oasst1(p, c),
}
GOOD = {
    "hh": hh([("user", "Hi")], "Hello!", "Go away."),
    "uf": fx.UF_RECORD,
    "shp": fx.shp_record(),
    "pku": fx.pku_record(),
    "tldr": fx.tldr_record(),
    "slf": fx.slf_record(),
    "oasst": fx.oasst_tree(),
}


def _uf(index=0, **fields):
    """UF_RECORD with completion ``index``'s fields replaced."""
    record = copy.deepcopy(fx.UF_RECORD)
    record["completions"][index].update(fields)
    return record


def _uf_rating(value, aspect="honesty"):
    record = copy.deepcopy(fx.UF_RECORD)
    record["completions"][0]["annotations"][aspect]["Rating"] = value
    return record


def _hh(chosen, rejected):
    return {"chosen": chosen, "rejected": rejected}


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


# (reader, bad line, reason). The bad line sits between two good records (line 2); a str is
# written verbatim, so JSON NaN / Infinity literals appear exactly as a broken dump has them.
RECORD_CASES = {
    # decoding, every reader shares it
    "invalid_utf8": ("hh", b'{"chosen": "\xff\xfe"}', "non_utf8"),
    "truncated_json": ("hh", '{"chosen": "\\n\\nHuman: hi', "bad_json"),
    "json_nested_100000_deep": ("hh", "[" * 100_000 + "]" * 100_000, "bad_json"),
    "object_nested_100000_deep": ("shp", '{"a":' * 100_000 + "1" + "}" * 100_000, "bad_json"),
    "not_an_object": ("hh", "[1, 2, 3]", "not_object"),
    "bare_string": ("uf", '"just text"', "not_object"),
    # HH-RLHF
    "hh_empty_reply": ("hh", _hh("\n\nHuman: hi\n\nAssistant:", "\n\nHuman: hi\n\nAssistant: yo"),
                       "empty_completion"),
    "hh_whitespace_reply": ("hh", _hh("\n\nHuman: hi\n\nAssistant:  \n",
                                      "\n\nHuman: hi\n\nAssistant: yo"), "empty_completion"),
    "hh_missing_chosen": ("hh", {"rejected": "\n\nHuman: hi\n\nAssistant: yo"}, "missing_field"),
    "hh_null_rejected": ("hh", {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": None},
                         "missing_field"),
    "hh_chosen_not_str": ("hh", {"chosen": 5, "rejected": "x"}, "wrong_type"),
    "hh_no_assistant_turn": ("hh", _hh("\n\nHuman: hi", "\n\nHuman: hi there"),
                             "unparseable_transcript"),
    "hh_prompt_mismatch": ("hh", _hh("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y"),
                           "prompt_mismatch"),
    "hh_identical": ("hh", _hh("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: a\n\nAssistant: x"),
                     "identical_completions"),
    "hh_lone_surrogate": ("hh", ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: \\ud800", '
                                 '"rejected": "\\n\\nHuman: a\\n\\nAssistant: y"}'), "non_utf8"),
    # UltraFeedback scores: outside the documented ranges or not numbers
    "uf_score_nan": ("uf", json.dumps(_uf(**{"fine-grained_score": math.nan})), "bad_score"),
    "uf_score_infinity": ("uf", json.dumps(_uf(**{"fine-grained_score": math.inf})), "bad_score"),
    "uf_score_minus_infinity": ("uf", json.dumps(_uf(**{"fine-grained_score": -math.inf})),
                                "bad_score"),
    "uf_score_string": ("uf", _uf(**{"fine-grained_score": "4"}), "bad_score"),
    "uf_score_99": ("uf", _uf(**{"fine-grained_score": 99}), "bad_score"),
    "uf_score_minus_1e308": ("uf", _uf(**{"fine-grained_score": -1e308}), "bad_score"),
    "uf_score_zero": ("uf", _uf(**{"fine-grained_score": 0.0}), "bad_score"),
    "uf_score_bool": ("uf", _uf(**{"fine-grained_score": True}), "bad_score"),
    "uf_overall_11": ("uf", _uf(overall_score=11.0), "bad_score"),
    "uf_overall_nan": ("uf", json.dumps(_uf(overall_score=math.nan)), "bad_score"),
    "uf_rating_6": ("uf", _uf_rating("6"), "bad_score"),
    "uf_rating_word": ("uf", _uf_rating("excellent"), "bad_score"),
    "uf_rating_nan_number": ("uf", json.dumps(_uf_rating(math.nan)), "bad_score"),
    "uf_rating_nan_string": ("uf", _uf_rating("nan"), "bad_score"),
    "uf_rating_bool": ("uf", _uf_rating(True), "bad_score"),
    "uf_no_instruction": ("uf", _without(fx.UF_RECORD, "instruction"), "missing_field"),
    "uf_completions_not_list": ("uf", {**fx.UF_RECORD, "completions": {"a": 1}}, "wrong_type"),
    "uf_completion_not_object": ("uf", {**fx.UF_RECORD, "completions": ["text"]}, "wrong_type"),
    # SHP
    "shp_ratio_1e300": ("shp", fx.shp_record(score_ratio=1e300), "bad_value"),
    "shp_ratio_nan": ("shp", json.dumps(fx.shp_record(score_ratio=math.nan)), "bad_value"),
    "shp_ratio_infinity": ("shp", json.dumps(fx.shp_record(score_ratio=math.inf)), "bad_value"),
    "shp_ratio_below_1": ("shp", fx.shp_record(score_ratio=0.5), "bad_value"),
    "shp_ratio_string": ("shp", fx.shp_record(score_ratio="4"), "wrong_type"),
    "shp_score_zero": ("shp", fx.shp_record(score_B=0), "bad_value"),
    "shp_score_string": ("shp", fx.shp_record(score_A="12"), "wrong_type"),
    "shp_label_2": ("shp", fx.shp_record(labels=2), "bad_value"),
    # PKU-SafeRLHF, TL;DR, SLF5K, OASST1
    "pku_safer_id_3": ("pku", fx.pku_record(safer_response_id=3), "bad_value"),
    "pku_safe_flag_str": ("pku", fx.pku_record(is_response_0_safe="no"), "wrong_type"),
    "pku_empty_response": ("pku", fx.pku_record(response_0=""), "empty_completion"),
    "tldr_choice_2": ("tldr", fx.tldr_record(choice=2), "bad_value"),
    "tldr_no_info": ("tldr", _without(fx.tldr_record(), "info"), "missing_field"),
    "slf_preference_both": ("slf", fx.slf_record(comparison_preference="Both"), "bad_value"),
    "oasst_prompt_not_object": ("oasst", {**fx.oasst_tree(), "prompt": "text"}, "wrong_type"),
}


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_malformed_record_is_a_file_line_error_or_a_counted_skip(case, tmp_path):
    reader, bad, reason = RECORD_CASES[case]
    path = write_jsonl(tmp_path / f"{case}.jsonl", [GOOD[reader], bad, GOOD[reader]])
    with pytest.raises(DataError) as err:
        READERS[reader](path, None)
    message = str(err.value)
    assert message.startswith(f"{path}:2: {reason}: ") and "\n" not in message
    result = READERS[reader](path, ReadConfig(on_error="skip"))
    assert result.report.skipped == {reason: 1}
    assert result.report.skipped_by_file == {str(path): 1}
    good = READERS[reader](write_jsonl(tmp_path / "good.jsonl", [GOOD[reader]]), None)
    # The two good records are read in full. A bad UltraFeedback score skips one completion
    # only, so that record still pairs its other completions: one more pair.
    extra = len(good) if reason == "bad_score" else 0
    assert len(result) == 2 * len(good) + extra


# ----------------------------------------------------------------------------- damaged files


def _gz_records(n: int) -> bytes:
    lines = [json.dumps(hh([("user", f"question {i}")], f"answer {i}", f"no {i}")) for i in range(n)]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_crc(data: bytes) -> bytes:
    # The gzip trailer is CRC32 then size, little endian: corrupt the CRC only.
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]


def _flipped(data: bytes) -> bytes:
    k = len(data) - 20  # inside the final deflate block
    return data[:k] + bytes([data[k] ^ 0x10]) + data[k + 1 :]


FILE_CASES = {
    # name: (file name, bytes, reason, whole-file problem?)
    "truncated_gzip": ("train.jsonl.gz", _truncated(_gz_records(200)), "corrupt_file", False),
    "gzip_bad_crc": ("train.jsonl.gz", _bad_crc(_gz_records(200)), "corrupt_file", False),
    "gzip_flipped_byte": ("train.jsonl.gz", _flipped(_gz_records(200)), "corrupt_file", False),
    "gz_that_is_not_gzip": ("train.jsonl.gz", b'{"chosen": "plain text"}\n', "corrupt_file",
                            False),
    "truncated_bz2": ("train.jsonl.bz2", _truncated(bz2.compress(gzip.decompress(_gz_records(200)))),
                      "corrupt_file", False),
    "empty_file": ("train.jsonl", b"", "empty_file", True),
    "whitespace_only_file": ("train.jsonl", b"  \n\n\t\n", "empty_file", True),
    "empty_gzip": ("train.jsonl.gz", gzip.compress(b"", mtime=0), "empty_file", True),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_damaged_file_is_a_one_line_error_or_a_counted_skip(case, tmp_path):
    name, data, reason, whole_file = FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        hh_rlhf.read_hh_rlhf(path)
    message = str(err.value)
    assert "\n" not in message
    if whole_file:
        assert message.startswith(f"{path}: {reason}: ")
    else:
        assert message.startswith(f"{path}:{err.value.line}: {reason}: ") and err.value.line >= 1
    result = hh_rlhf.read_hh_rlhf(path, ReadConfig(on_error="skip"))
    assert result.report.skipped == {reason: 1}
    assert result.report.skipped_by_file == {str(path): 1}
    if reason == "corrupt_file":
        # Any record of a damaged stream may be garbled (a flipped byte can change a reply and
        # still parse), so none is used.
        assert (len(result), result.report.records) == (0, 0)


def test_damage_cases_read_as_described():
    # The truncated and flipped streams stop part-way; the bad CRC is found after all 200.
    with pytest.raises(EOFError):
        gzip.decompress(_truncated(_gz_records(200)))
    with pytest.raises(gzip.BadGzipFile, match="CRC check failed"):
        gzip.decompress(_bad_crc(_gz_records(200)))


def test_damage_is_located_where_decompression_fails(tmp_path):
    # A bad CRC is found after the 200 lines; a file that is not gzip fails at once.
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(_bad_crc(_gz_records(200)))
    with pytest.raises(DataError, match=r"train\.jsonl\.gz:201: corrupt_file: .*CRC check failed"):
        hh_rlhf.read_hh_rlhf(path)
    path.write_bytes(b'{"chosen": "plain text"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl\.gz:1: corrupt_file: .*Not a gzipped file"):
        hh_rlhf.read_hh_rlhf(path)


# ----------------------------------------------------------------------------- score rules


def _scored(scores):
    """An UltraFeedback record whose completions have fine-grained scores ``scores`` (JSON
    numbers, NaN written as the NaN literal a broken dump holds)."""
    completions = [fx.uf_completion(f"m{i}", f"reply {i}", ["3"] * 4, 5.0)
                   for i in range(len(scores))]
    for c, s in zip(completions, scores):
        c["fine-grained_score"] = s
    return json.dumps(fx.uf_record(completions))


def _pairs(tmp_path, scores):
    path = write_jsonl(tmp_path / "flan.jsonl", [_scored(scores)])
    return ultrafeedback.read_ultrafeedback(path, ReadConfig(on_error="skip"))


def test_nan_score_is_never_chosen_and_the_valid_pair_is_kept(tmp_path):
    result = _pairs(tmp_path, [1.0, math.nan, 5.0])
    assert [(p.chosen, p.rejected) for p in result.examples] == [("reply 2", "reply 0")]
    assert result.report.skipped == {"bad_score": 1}
    first = _pairs(tmp_path, [math.nan, 2.0, 4.0])
    assert [(p.chosen, p.rejected) for p in first.examples] == [("reply 2", "reply 1")]


def test_two_nan_scores_make_no_pair(tmp_path):
    result = _pairs(tmp_path, [math.nan, math.nan])
    assert (len(result), result.report.skipped) == (0, {"bad_score": 2})
    assert _pairs(tmp_path, [math.nan, math.nan, 3.0]).report.filtered == {
        "fewer_than_two_scored": 1}


def test_conversions_refuse_non_finite_scores():
    with pytest.raises(ValueError, match="finite"):
        conversions.scores_to_pairs(user_prompt("q"), ["a", "b"], [math.nan, 1.0])
    with pytest.raises(ValueError, match="finite"):
        conversions.rating_to_thumb(user_prompt("q"), "a", math.nan, threshold=4.0)

