"""Readers and TFDS builders for UltraFeedback, SHP, OASST1, PKU-SafeRLHF, TL;DR and SLF5K.

Fixtures are written in each release's original line format (field names and nesting as
published), with only the fields' contents made up.
"""

from __future__ import annotations

import copy
import math

import pytest
import tensorflow_datasets as tfds

from fbjax.data import oasst1, pku_saferlhf, shp, slf5k, tldr_comparisons, ultrafeedback
from fbjax.data.examples import (
    ASSISTANT,
    USER,
    BinaryExample,
    FeedbackExample,
    NegativeExample,
    PairedExample,
    RankedExample,
)
from fbjax.data.reading import DataError, ReadConfig
from fbjax.data.tfds_common import load_split
from tests.data.helpers import write_jsonl

# ---------------------------------------------------------------- UltraFeedback


def uf_completion(model, response, ratings, overall, critique="Could be more concise."):
    aspects = {}
    for aspect, rating in zip(ultrafeedback.ASPECTS, ratings):
        entry = {"Rating": rating, "Rationale": f"{aspect} rationale for {model}"}
        if aspect in ("truthfulness", "helpfulness"):
            entry = {
                "Type": ["1"],
                "Rationale": "type rationale",
                "Rating": rating,
                "Rationale For Rating": f"{aspect} rationale for {model}",
            }
        aspects[aspect] = entry
    numeric = [float(r) for r in ratings if r != "N/A"]
    return {
        "model": model,
        "principle": "helpfulness",
        "custom_system_prompt": "You are a helpful assistant.",
        "response": response,
        "annotations": aspects,
        "critique": critique,
        "overall_score": overall,
        "fine-grained_score": sum(numeric) / len(numeric) if numeric else None,
    }


def uf_record(completions, instruction="Name a prime number."):
    return {
        "source": "evol_instruct",
        "instruction": instruction,
        "models": [c["model"] for c in completions],
        "completions": completions,
        "correct_answers": ["None"],
        "incorrect_answers": ["None"],
    }


UF_RECORD = uf_record(
    [
        uf_completion("gpt-4", "7 is prime.", ["5", "5", "5", "5"], 9.0),
        uf_completion("llama-2-7b", "9 is prime.", ["2", "3", "1", "2"], 3.0),
        uf_completion("alpaca-7b", "2 is prime.", ["5", "4", "5", "4"], 8.5),
        uf_completion("falcon-40b", "", ["N/A", "N/A", "N/A", "N/A"], None, critique=""),
    ]
)
UF_TIED = uf_record(
    [uf_completion("a", "one", ["3"] * 4, 5.0), uf_completion("b", "two", ["3"] * 4, 5.0)],
    instruction="Say a number.",
)


def test_ultrafeedback_views(tmp_path):
    path = write_jsonl(tmp_path / "evol_instruct.jsonl", [UF_RECORD, UF_TIED])

    paired = ultrafeedback.read_ultrafeedback(path, view="paired")
    assert [(p.chosen, p.rejected) for p in paired.examples] == [("7 is prime.", "9 is prime.")]
    assert paired.examples[0].prompt == ((USER, "Name a prime number."),)
    assert paired.examples[0].meta["chosen_score"] == 5.0
    assert paired.report.filtered == {"empty_response": 1, "no_score_margin": 1}

    by_overall = ultrafeedback.read_ultrafeedback(
        path,
        view="paired",
        options=ultrafeedback.UltraFeedbackOptions(
            score="overall_score", pair_strategy="all_pairs"
        ),
    )
    assert [(p.chosen, p.rejected) for p in by_overall.examples] == [
        ("7 is prime.", "2 is prime."),
        ("7 is prime.", "9 is prime."),
        ("2 is prime.", "9 is prime."),
    ]

    binary = ultrafeedback.read_ultrafeedback(path, view="binary")
    assert [(b.completion, b.label) for b in binary.examples] == [
        ("7 is prime.", True),
        ("9 is prime.", False),
        ("2 is prime.", True),
        ("one", False),
        ("two", False),
    ]
    assert all(isinstance(b, BinaryExample) for b in binary.examples)

    feedback = ultrafeedback.read_ultrafeedback(
        path, view="feedback", options=ultrafeedback.UltraFeedbackOptions(include_rationales=True)
    )
    critiques = [f for f in feedback.examples if f.kind == "critique"]
    assert [(f.completion, f.score) for f in critiques][:3] == [
        ("7 is prime.", 9.0),
        ("9 is prime.", 3.0),
        ("2 is prime.", 8.5),
    ]
    assert all(isinstance(f, FeedbackExample) and f.refinement is None for f in feedback.examples)
    rationales = [f for f in feedback.examples if f.kind == "rationale"]
    assert len(rationales) == 4 * 5  # four aspects for each non-empty completion
    assert rationales[0].meta["aspect"] == "instruction_following" and rationales[0].score == 5.0


def test_ultrafeedback_malformed(tmp_path):
    bad_rating = copy.deepcopy(UF_RECORD)
    bad_rating["completions"][0]["annotations"]["honesty"]["Rating"] = "excellent"
    bad_type = copy.deepcopy(UF_RECORD)
    bad_type["completions"][1] = "not an object"
    no_instruction = copy.deepcopy(UF_RECORD)
    del no_instruction["instruction"]
    path = write_jsonl(tmp_path / "flan.jsonl", [UF_RECORD, bad_rating, bad_type, no_instruction])
    with pytest.raises(DataError, match=r"flan\.jsonl:2: bad_score: completions\[0\]"):
        ultrafeedback.read_ultrafeedback(path)
    result = ultrafeedback.read_ultrafeedback(path, ReadConfig(on_error="skip"))
    # The badly rated completion is skipped; its record's other completions still pair.
    assert result.report.skipped == {"bad_score": 1, "wrong_type": 1, "missing_field": 1}
    assert [e.meta["line"] for e in result.examples] == [1, 2]
    assert [p.line for p in result.report.problems] == [2, 3, 4]
    with pytest.raises(ValueError, match="score must be one of"):
        ultrafeedback.UltraFeedbackOptions(score="stars")


# ---------------------------------------------------------------- SHP


def shp_record(**overrides):
    record = {
        "post_id": "himc90",
        "domain": "askculinary_train",
        "upvote_ratio": 0.99,
        "history": "How do I keep pasta from sticking?",
        "c_root_id_A": "fv1ymiw",
        "c_root_id_B": "fv1ytl7",
        "created_at_utc_A": 1591808000,
        "created_at_utc_B": 1591808900,
        "score_A": 12,
        "score_B": 3,
        "human_ref_A": "Use plenty of water and stir early.",
        "human_ref_B": "Add oil.",
        "labels": 1,
        "seconds_difference": 900.0,
        "score_ratio": 4.0,
    }
    record.update(overrides)
    return record


def test_shp_pairs_and_weights(tmp_path):
    records = [
        shp_record(),
        shp_record(labels=0, score_A=2, score_B=5, score_ratio=2.5),
        shp_record(score_ratio=1.5, score_A=3, score_B=2),
    ]
    path = write_jsonl(tmp_path / "askculinary" / "train.json", records)
    result = shp.read_shp(path)
    first, second, third = result.examples
    assert first.prompt == ((USER, "How do I keep pasta from sticking?"),)
    assert (first.chosen, first.rejected) == ("Use plenty of water and stir early.", "Add oil.")
    assert first.weight == pytest.approx(4.0 / 5.0)
    assert (second.chosen, second.rejected) == ("Add oil.", "Use plenty of water and stir early.")
    assert second.meta["chosen_score"] == 5 and second.weight == pytest.approx(2.5 / 3.5)
    assert third.weight == pytest.approx(0.6)

    filtered = shp.read_shp(path, min_score_ratio=2.0, weighting="log_ratio")
    assert len(filtered) == 2 and filtered.report.filtered == {"below_min_score_ratio": 1}
    assert filtered.examples[0].weight == pytest.approx(math.log(4.0))
    assert shp.read_shp(path, weighting="uniform").examples[0].weight == 1.0


@pytest.mark.parametrize(
    "record, reason",
    [
        (shp_record(labels=2), "bad_value"),
        (shp_record(labels=True), "wrong_type"),
        (shp_record(human_ref_B="  "), "empty_completion"),
        (shp_record(human_ref_B="Use plenty of water and stir early."), "identical_completions"),
        ({k: v for k, v in shp_record().items() if k != "score_ratio"}, "missing_field"),
    ],
)
def test_shp_malformed(tmp_path, record, reason):
    path = write_jsonl(tmp_path / "train.json", [shp_record(), record])
    with pytest.raises(DataError) as err:
        shp.read_shp(path)
    assert (err.value.line, err.value.reason) == (2, reason)


# ---------------------------------------------------------------- OASST1


def msg(role, text, replies=(), rank=None, lang="en", deleted=False, mid=None):
    return {
        "message_id": mid or f"{role}-{text[:8]}",
        "parent_id": None,
        "user_id": "u",
        "created_date": "2023-02-05T00:00:00+00:00",
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": True,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "emojis": {"+1": 1},
        "replies": list(replies),
        "labels": {"name": ["spam"], "value": [0.0], "count": [3]},
    }


def oasst_tree(tree_id="tree-1", state="ready_for_export", lang="en"):
    follow_up = msg(
        "prompter",
        "Why is the sky blue?",
        [
            msg("assistant", "Rayleigh scattering.", rank=1),
            msg("assistant", "Because shorter wavelengths scatter more.", rank=0),
            msg("assistant", "Unranked reply."),
        ],
        lang=lang,
    )
    root = msg(
        "prompter",
        "Tell me about the sky.",
        [
            msg("assistant", "It is above us.", [follow_up], rank=0),
            msg("assistant", "It is blue.", rank=1),
            msg("assistant", "Deleted reply.", rank=2, deleted=True),
        ],
        lang=lang,
    )
    return {"message_tree_id": tree_id, "tree_state": state, "prompt": root}


def test_oasst1_ranked_examples(tmp_path):
    path = write_jsonl(
        tmp_path / oasst1.TREES_FILE,
        [oasst_tree(), oasst_tree("tree-2", state="growing"), oasst_tree("tree-3", lang="de")],
    )
    result = oasst1.read_oasst1(path)
    first, second, third = result.examples[:3]
    assert isinstance(first, RankedExample)
    assert first.prompt == ((USER, "Tell me about the sky."),)
    assert first.completions == ("It is above us.", "It is blue.")
    assert first.scores == (0.0, -1.0)
    assert second.prompt == (
        (USER, "Tell me about the sky."),
        (ASSISTANT, "It is above us."),
        (USER, "Why is the sky blue?"),
    )
    assert second.completions == (
        "Because shorter wavelengths scatter more.",
        "Rayleigh scattering.",
    )
    assert third.meta["message_tree_id"] == "tree-3"
    assert len(result) == 4
    assert result.report.filtered == {"tree_not_ready": 1, "deleted_reply": 2, "unranked_reply": 2}

    english = oasst1.read_oasst1(path, languages=("en",))
    assert len(english) == 2 and english.report.filtered["other_language"] == 2


def test_oasst1_malformed(tmp_path):
    broken_role = oasst_tree()
    broken_role["prompt"]["replies"][0]["role"] = "moderator"
    not_alternating = oasst_tree()
    not_alternating["prompt"]["replies"][1]["role"] = "prompter"
    no_text = oasst_tree()
    del no_text["prompt"]["replies"][0]["replies"][0]["text"]
    path = write_jsonl(tmp_path / "trees.jsonl", [broken_role, not_alternating, no_text])
    result = oasst1.read_oasst1(path, ReadConfig(on_error="skip"))
    assert [(p.line, p.reason) for p in result.report.problems] == [
        (1, "bad_value"),
        (2, "unparseable_transcript"),
        (3, "missing_field"),
    ]
    assert "prompt.replies[0].replies[0]" in result.report.problems[2].detail


# ---------------------------------------------------------------- PKU-SafeRLHF


def pku_record(**overrides):
    record = {
        "prompt": "How do I pick a lock?",
        "response_0": "Here is how to break into a house...",
        "response_1": "I can't help with breaking in, but a locksmith can.",
        "prompt_source": "Alpaca-7B",
        "response_0_source": "Alpaca-7B",
        "response_1_source": "Alpaca-7B",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "response_0_harm_category": {"Violent Crimes": False, "Property Crimes": True},
        "response_1_harm_category": {"Violent Crimes": False, "Property Crimes": False},
        "response_0_severity_level": 2,
        "response_1_severity_level": 0,
        "better_response_id": 0,
        "safer_response_id": 1,
        "response_0_sha256": "0" * 64,
        "response_1_sha256": "1" * 64,
    }
    record.update(overrides)
    return record


def test_pku_views(tmp_path):
    both_safe = pku_record(is_response_0_safe=True, response_0="Call a locksmith.")
    path = write_jsonl(tmp_path / "data" / "Alpaca-7B" / "train.jsonl", [pku_record(), both_safe])
    safer = pku_saferlhf.read_pku_saferlhf(path, view="safer").examples[0]
    assert safer.chosen.startswith("I can't help") and safer.meta["axis"] == "safer"
    better = pku_saferlhf.read_pku_saferlhf(path, view="better").examples[0]
    assert better.chosen.startswith("Here is how") and better.meta["axis"] == "better"
    negatives = pku_saferlhf.read_pku_saferlhf(path, view="negative")
    assert len(negatives) == 1 and isinstance(negatives.examples[0], NegativeExample)
    assert negatives.examples[0].completion.startswith("Here is how")
    assert negatives.examples[0].meta["severity_level"] == 2
    assert negatives.report.filtered == {"no_unsafe_response": 1}


@pytest.mark.parametrize(
    "record, reason",
    [
        (pku_record(is_response_0_safe="no"), "wrong_type"),
        (pku_record(safer_response_id=3), "bad_value"),
        (pku_record(response_1="Here is how to break into a house..."), "identical_completions"),
        (pku_record(response_0=""), "empty_completion"),
    ],
)
def test_pku_malformed(tmp_path, record, reason):
    path = write_jsonl(tmp_path / "test.jsonl", [record])
    with pytest.raises(DataError) as err:
        pku_saferlhf.read_pku_saferlhf(path)
    assert (err.value.line, err.value.reason) == (1, reason)


# ---------------------------------------------------------------- TL;DR comparisons


def tldr_record(split="train", choice=1, **overrides):
    record = {
        "info": {
            "id": "t3_2vwp1w",
            "post": "I had a car accident on friday...",
            "title": "Car accident questions.",
            "subreddit": "legaladvice",
        },
        "summaries": [
            {"text": " car accident caused damage.", "policy": "sup4_ppo_rm3_kl10", "note": None},
            {
                "text": " other party was speeding; how to prove it?",
                "policy": "ref",
                "note": "Unclear what happened.",
            },
        ],
        "choice": choice,
        "worker": "ikNmucwunMnYJCQpnq6ZYb57OW7NiD",
        "batch": "batch9",
        "split": split,
        "extra": {"confidence": 8},
    }
    record.update(overrides)
    return record


def test_tldr_comparisons(tmp_path):
    path = write_jsonl(tmp_path / "batch9.json", [tldr_record(), tldr_record("valid2", choice=0)])
    result = tldr_comparisons.read_tldr_comparisons(path, splits=("train",))
    (pair,) = result.examples
    assert pair.prompt == (
        (
            USER,
            "SUBREDDIT: r/legaladvice\nTITLE: Car accident questions.\n"
            "POST: I had a car accident on friday...\n\nTL;DR:",
        ),
    )
    assert pair.chosen == "other party was speeding; how to prove it?"
    assert pair.rejected == "car accident caused damage."
    assert pair.meta["confidence"] == 8 and pair.meta["chosen_policy"] == "ref"
    assert result.report.filtered == {"other_split": 1}
    every = tldr_comparisons.read_tldr_comparisons(path)
    assert every.examples[1].chosen == "car accident caused damage."

    bad = write_jsonl(tmp_path / "batch10.json", [tldr_record(choice=2), tldr_record(summaries=[])])
    skipped = tldr_comparisons.read_tldr_comparisons(bad, ReadConfig(on_error="skip"))
    assert [(p.line, p.reason) for p in skipped.report.problems] == [
        (1, "bad_value"),
        (2, "bad_value"),
    ]


# ---------------------------------------------------------------- SLF5K


def slf_record(**overrides):
    record = {
        "id": "t3_abc",
        "subreddit": "relationships",
        "title": "My friend keeps cancelling plans",
        "post": "We agree to meet and she cancels at the last minute.",
        "tldr_human_reference_summary": "friend cancels plans; what do I do?",
        "ideal_human_summary": "My friend always cancels our plans last minute. How do I respond?",
        "generated_summary_for_feedback": "Friend cancels.",
        "feedback": "The summary omits that this happens repeatedly and the question asked.",
        "feedback_class": "Coverage",
        "has_additional_feedback": "No",
        "generated_summary_for_comparison_A": "Friend cancels often; advice?",
        "generated_summary_for_comparison_B": "I like my friend.",
        "comparison_preference": "Summary A",
    }
    record.update(overrides)
    return record


def test_slf5k_views(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [slf_record(), slf_record(feedback="", comparison_preference="Summary B")],
    )
    fb = slf5k.read_slf5k(path, view="feedback")
    (example,) = fb.examples
    assert example.kind == "critique" and example.completion == "Friend cancels."
    assert example.refinement.startswith("My friend always cancels")
    assert example.prompt[0][1].startswith("SUBREDDIT: r/relationships\nTITLE: My friend")
    assert example.meta["feedback_class"] == "Coverage"
    assert fb.report.filtered == {"no_feedback": 1}

    pairs = slf5k.read_slf5k(path, view="paired").examples
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("Friend cancels often; advice?", "I like my friend."),
        ("I like my friend.", "Friend cancels often; advice?"),
    ]
    bad = write_jsonl(tmp_path / "dev.jsonl", [slf_record(comparison_preference="Both")])
    with pytest.raises(DataError, match=r"dev\.jsonl:1: bad_value"):
        slf5k.read_slf5k(bad, view="paired")


# ---------------------------------------------------------------- TFDS builders


def _prepare(builder_cls, config, manual, tmp_path, **kwargs):
    builder = builder_cls(config=config, data_dir=tmp_path / "tfds", **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return builder


def test_builders_prepare_from_manual_dir(tmp_path):
    manual = tmp_path / "manual"
    write_jsonl(manual / "ultra" / "flan.jsonl", [UF_RECORD, UF_TIED])
    uf = _prepare(ultrafeedback.FbjaxUltrafeedback, "feedback", manual / "ultra", tmp_path)
    stored = load_split(uf, "train")
    assert stored == list(
        ultrafeedback.read_ultrafeedback(manual / "ultra" / "flan.jsonl", view="feedback").examples
    )
    assert stored[0].score == 9.0 and stored[-1].refinement is None

    for split in ("train", "validation", "test"):
        write_jsonl(manual / "shp" / "askculinary" / f"{split}.json", [shp_record()])
    shp_builder = _prepare(shp.FbjaxShp, "vote_share", manual / "shp", tmp_path)
    assert load_split(shp_builder, "validation")[0].weight == pytest.approx(0.8)

    write_jsonl(manual / "oasst" / oasst1.TREES_FILE, [oasst_tree()])
    oa = _prepare(oasst1.FbjaxOasst1, "en", manual / "oasst", tmp_path)
    ranked = load_split(oa, "train")
    assert [r.completions for r in ranked] == [
        ("It is above us.", "It is blue."),
        ("Because shorter wavelengths scatter more.", "Rayleigh scattering."),
    ]

    for split in ("train", "test"):
        write_jsonl(manual / "pku" / "data" / "Alpaca-7B" / f"{split}.jsonl", [pku_record()])
    pku = _prepare(pku_saferlhf.FbjaxPkuSaferlhf, "negative", manual / "pku", tmp_path)
    assert isinstance(load_split(pku, "test")[0], NegativeExample)

    write_jsonl(
        manual / "tldr" / "batch9.json",
        [tldr_record(), tldr_record("valid1"), tldr_record("valid2"), {"bad": 1}],
    )
    tl = _prepare(
        tldr_comparisons.FbjaxTldrComparisons, "paired", manual / "tldr", tmp_path, on_error="skip"
    )
    assert [len(load_split(tl, s)) for s in ("train", "validation", "test")] == [1, 1, 1]
    assert tl.reports["train"].skipped == {"missing_field": 1}

    for file in slf5k.SPLIT_FILES.values():
        write_jsonl(manual / "slf" / file, [slf_record()])
    sl = _prepare(slf5k.FbjaxSlf5k, "paired", manual / "slf", tmp_path)
    assert isinstance(load_split(sl, "development")[0], PairedExample)


def test_builder_reports_missing_manual_files(tmp_path):
    manual = tmp_path / "manual"
    write_jsonl(manual / "unrelated.txt", ["x"])
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        _prepare(slf5k.FbjaxSlf5k, "feedback", manual, tmp_path)
