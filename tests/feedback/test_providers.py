"""Feedback providers: score-based emitters, the callable and oracle providers, the reward model
and the local judge (through real generation with hand-set tiny models)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from fbjax import feedback, sim
from fbjax.data import encode
from fbjax.data import examples as ex
from fbjax.models.decoder import Decoder, token_rewards
from fbjax.sampling import SamplingConfig
from tests.feedback.helpers import CharTokenizer, bigram_judge, init_params
from tests.train.helpers import tiny_llama

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)


def _lookup(table):
    return feedback.ScoreFunction(lambda prompt, response, meta: table[response])


def test_preferences_thumbs_rankings_from_scores():
    scores = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.5, "e": 0.5}
    batch = feedback.Responses.of(["p1", "p2", "p3"], [["a", "b", "c"], ["d", "e"], ["a"]])
    fb = feedback.Preferences(_lookup(scores))(batch)
    # p1: best b (0.9) over worst a (0.2); p2: a tie, no pair; p3: one response, a failure.
    assert [(r.chosen, r.rejected) for r in fb.records] == [("b", "a")]
    assert fb.records[0].prompt == ex.user_prompt("p1")
    assert fb.stats["feedback/ties"] == 1
    assert [(f.prompt_index, f.reason) for f in fb.failures] == [
        (2, "one response: nothing to compare")]
    every = feedback.Preferences(_lookup(scores), all_pairs=True)(batch)
    assert [(r.chosen, r.rejected) for r in every.records] == [("b", "c"), ("b", "a"),
                                                               ("c", "a")]
    thumbs = feedback.Thumbs(_lookup(scores), threshold=0.5)(batch)
    assert [(r.completion, r.label) for r in thumbs.records] == [
        ("a", False), ("b", True), ("c", True), ("d", True), ("e", True), ("a", False)]
    assert thumbs.stats["feedback/thumbs_up_rate"] == pytest.approx(4 / 6)
    ranked = feedback.Rankings(_lookup(scores))(batch)
    assert ranked.records[0].completions == ("b", "c", "a")
    assert ranked.records[0].scores == (0.9, 0.5, 0.2)


def test_scores_must_be_finite():
    batch = feedback.Responses.of(["p"], [["a", "b"]])
    with pytest.raises(ValueError, match="non-finite score for prompt 0"):
        feedback.Preferences(_lookup({"a": 1.0, "b": float("nan")}))(batch)


def test_per_response_callable_counts_unparseable():
    def grade(prompt, response, meta):
        if not response.isdigit():
            raise feedback.Unparseable("not a number", response)
        return ex.BinaryExample(prompt=prompt, completion=response,
                                label=int(response) == meta["answer"])

    batch = feedback.Responses.of(["2+2=", "3+3="], [["4", "five"], ["6"]],
                                  [{"answer": 4}, {"answer": 6}])
    fb = feedback.PerResponse(grade)(batch)
    assert [(r.completion, r.label) for r in fb.records] == [("4", True), ("6", True)]
    assert fb.failures == (feedback.Failure(0, 1, "not a number", "five"),)
    assert fb.stats["feedback/unparsed"] == 1 and fb.stats["feedback/records"] == 2
    with pytest.raises(TypeError, match="expected an fbjax.data.examples record"):
        feedback.PerResponse(lambda p, r, m: 1.0)(batch)


def test_oracle_provider_wraps_the_simulator():
    task = sim.make_task("arithmetic")
    batch = feedback.Responses.of(["12+7=", "5-3="], [["19", "18"], ["2"]])
    scores = feedback.OracleScores(task).score(batch)
    assert scores[0][0] == 1.0 and scores[0][1] < 1.0 and scores[1][0] == 1.0
    pairs = feedback.Preferences(feedback.OracleScores(task))(batch)
    assert [(r.chosen, r.rejected) for r in pairs.records] == [("19", "18")]
    crit = feedback.Oracle(task, sim.feedback.critiques)(batch)
    expected = sim.feedback.critiques(task, ["12+7=", "12+7=", "5-3="], ["19", "18", "2"])
    assert crit.records == tuple(expected)
    thumbs = feedback.Oracle(task, functools.partial(sim.feedback.thumbs, threshold=1.0))(batch)
    assert [r.label for r in thumbs.records] == [True, False, True]


@functools.partial(jax.jit, static_argnums=0)
def _forward_rewards(config, params, ids, pos, mask):
    hidden, _ = Decoder(config).apply({"params": params}, ids, pos, mask)
    return token_rewards(params, config, hidden)


def _direct_rewards(config, params, tok, prompt, responses):
    """Each response scored as its own right-padded row (not the evaluation's packing): the
    reward head at the row's last real token (EOS)."""
    rows = [np.concatenate([encode.prompt_ids(tok, prompt), encode.completion_ids(tok, r)])
            for r in responses]
    width = 16  # one shape for every call: one compilation
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for n, r in enumerate(rows):
        ids[n, :len(r)], mask[n, :len(r)] = r, 1
    pos = np.broadcast_to(np.arange(width, dtype=np.int32), ids.shape)
    per_token = np.asarray(_forward_rewards(config, params, ids, pos, mask))
    return per_token[np.arange(len(rows)), mask.sum(axis=1) - 1]


def test_reward_model_preferences_follow_scores():
    tok = CharTokenizer()
    config = tiny_llama(vocab_size=32, reward_head=True)
    params = init_params(config, seed=3)
    head = np.linspace(-1.0, 1.0, config.hidden_size, dtype=np.float32)[:, None]
    prompts, responses = ["01", "23"], [["x", "yz", "q0", "Ye"], ["AB", "No"]]
    batch = feedback.Responses.of(prompts, responses)
    for sign in (1.0, -1.0):  # the score is linear in the head: flipping it reverses the order
        params["reward_head"] = jax.numpy.asarray(sign * head)
        rm = feedback.RewardModelScores(params, config, tok, rows=4)
        want = [_direct_rewards(config, params, tok, p, rs) for p, rs in zip(prompts, responses)]
        got = rm.score(batch)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
            assert len(set(np.round(w, 4))) == len(w)  # distinct: the order is decided
        fb = feedback.Preferences(rm)(batch)
        for record, w, rs in zip(fb.records, want, responses):
            assert record.chosen == rs[int(np.argmax(w))]
            assert record.rejected == rs[int(np.argmin(w))]
            assert record.meta["score_chosen"] == pytest.approx(w.max(), abs=1e-5)
        if sign == 1.0:
            first = fb.records
        else:
            assert [(r.chosen, r.rejected) for r in fb.records] == [
                (r.rejected, r.chosen) for r in first]
        threshold = float(np.median(np.concatenate(want)))
        thumbs = feedback.Thumbs(rm, threshold=threshold)(batch)
        assert [r.label for r in thumbs.records] == list(np.concatenate(want) >= threshold)
    with pytest.raises(ValueError, match="needs a reward model"):
        feedback.RewardModelScores(params, tiny_llama(vocab_size=32), tok)


@pytest.fixture(scope="module")
def judge_model():
    tok = CharTokenizer()
    # After x: "Yes"; after z: "No"; after q: "?"; after y: nothing (EOS at once).
    config, params = bigram_judge({"x": "Y", "Y": "e", "e": "s", "z": "N", "N": "o",
                                   "q": "?", "B": "A", "A": ""}, tok)
    return config, params, tok


def test_judge_judgments_count_unparseable_answers(judge_model):
    config, params, tok = judge_model
    judge = feedback.LocalJudge(params, config, tok,
                                feedback.JudgmentTemplate(text="{prompt}{response}",
                                                          labels={"Yes": 1.0, "No": 0.0}),
                                sampling_config=GREEDY)
    batch = feedback.Responses.of(["01", "2"], [["0x", "1z", "0q"], ["y", "3x"]])
    fb = judge(batch)
    assert [(r.completion, r.feedback, r.score, r.kind) for r in fb.records] == [
        ("0x", "Yes", 1.0, "judgment"), ("1z", "No", 0.0, "judgment"),
        ("3x", "Yes", 1.0, "judgment")]
    assert [(f.prompt_index, f.response_index, f.raw) for f in fb.failures] == [
        (0, 2, "?"), (1, 0, "")]
    assert all("does not start with one of" in f.reason for f in fb.failures)
    assert fb.stats["feedback/unparsed"] == 2 and fb.stats["feedback/responses"] == 5


def test_judge_critiques_and_refinements(judge_model):
    config, params, tok = judge_model
    batch = feedback.Responses.of(["0"], [["1x", "1y"]], [{"feedback": "fix it"}])
    crit = feedback.LocalJudge(params, config, tok, feedback.CritiqueTemplate(text="{response}"),
                               sampling_config=GREEDY)(batch)
    assert [(r.completion, r.feedback) for r in crit.records] == [("1x", "Yes")]
    assert crit.failures == (feedback.Failure(0, 1, "empty critique", ""),)
    ref = feedback.LocalJudge(params, config, tok,
                              feedback.RefinementTemplate(text="{feedback}{response}"),
                              sampling_config=GREEDY)(
        feedback.Responses.of(["0"], [["1z"]], [{"feedback": "0"}]))
    assert ref.records[0].refinement == "No" and ref.records[0].feedback == "0"
    with pytest.raises(ValueError, match="unknown field 'answer'"):
        feedback.LocalJudge(params, config, tok, feedback.CritiqueTemplate(text="{answer}"),
                            sampling_config=GREEDY)(batch)


def test_pairwise_judge_and_position_bias(judge_model):
    config, params, tok = judge_model
    # The input ends with the second response: ending in "B" the judge answers "A".
    template = feedback.PairwiseTemplate(text="{first}:{second}")
    batch = feedback.Responses.of(["0", "1"], [["0x", "1B", "2"], ["3z", "1q"]])
    fb = feedback.LocalJudge(params, config, tok, template, sampling_config=GREEDY)(batch)
    assert [(r.chosen, r.rejected) for r in fb.records] == [("0x", "1B")]
    assert [(f.prompt_index, f.response_index, f.raw) for f in fb.failures] == [
        (0, 2, ""), (1, 0, "?")]
    assert fb.failures[0].reason == "odd response out: no pair"
    # Asked both ways, "A" then (ending in x) "Yes": the second answer does not parse.
    both = feedback.LocalJudge(params, config, tok, template, sampling_config=GREEDY,
                               both_orders=True)(feedback.Responses.of(["0"], [["0x", "1B"]]))
    assert both.records == () and both.failures[0].raw == "Yes"
    # A judge that always says "A" is consistent with neither order swap: all inconsistent.
    config2, params2 = bigram_judge({"B": "A", "x": "A", "A": ""}, tok)
    biased = feedback.LocalJudge(params2, config2, tok, template, sampling_config=GREEDY,
                                 both_orders=True)(feedback.Responses.of(["0"], [["0x", "1B"]]))
    assert biased.records == () and biased.stats["feedback/inconsistent"] == 1
    assert biased.failures[0].reason == "verdict changes with the order of the responses"


def test_judge_win_rate():
    tok = CharTokenizer()
    # The input ends with the second response; the judge prefers whichever response ends in
    # "x": "B" when the second does, "A" when the second ends in "z" (so the first is the x).
    config, params = bigram_judge({"x": "B", "z": "A", "A": "", "B": ""}, tok)
    judge = feedback.LocalJudge(params, config, tok,
                                feedback.PairwiseTemplate(text="{first}:{second}"),
                                sampling_config=GREEDY, both_orders=True)
    got = feedback.judge_win_rate(judge, ["0", "1", "2", "3"], ["0x", "1z", "2x", "3q"],
                                  ["0z", "1x", "2x", "3z"])
    # wins: 0x over 0z; loss: 1z to 1x; 2x vs 2x: "B" then "B", inconsistent; 3q vs 3z: "A"
    # (first) then, swapped, the input ends in q: EOS, unparseable. 1 + 0.5 + 0.5 of 4.
    assert got == {"win_rate": 2 / 4, "decided": 2.0, "undecided": 2.0}


def test_load_judge_reads_local_directories_only(tmp_path, judge_model):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        feedback.load_judge(str(tmp_path / "org/model"), feedback.CritiqueTemplate())


def test_judge_training_pairs_round_trip_through_the_templates():
    """A judge trained on these pairs and answering perfectly gives back the oracle's records."""
    task = sim.make_task("arithmetic")
    prompts, responses = ["12+7=", "12+7=", "5-3="], ["19", "18", "2"]
    judgments = sim.feedback.judgments(task, prompts, responses)
    template = feedback.JudgmentTemplate()  # labels Correct / Incorrect: the simulator's
    pairs = feedback.judge_sft_pairs(template, judgments)
    assert pairs[1] == ("12+7=18\nJudgment:", "Incorrect: the ones digit is wrong.")
    for (_, answer), record in zip(pairs, judgments):
        back = template.record(record.prompt, record.completion, answer, {})
        assert back.feedback == record.feedback
        assert back.score == float(record.score == 1.0)  # the verdict of the oracle's reward
    refs = feedback.judge_sft_pairs(feedback.RefinementTemplate(),
                                    sim.feedback.refinements(task, prompts, responses))
    assert refs[1] == ("12+7=18\nFeedback: The ones digit should be 9, not 8.\nImproved:", "19")
    pair = ex.PairedExample(prompt=ex.user_prompt("1+1="), chosen="2", rejected="3")
    assert feedback.judge_sft_pairs(feedback.PairwiseTemplate(), [pair]) == [
        ("1+1=\nA: 2\nB: 3\nBetter:", "A"), ("1+1=\nA: 3\nB: 2\nBetter:", "B")]
    wrong = ex.FeedbackExample(prompt=ex.user_prompt("1+1="), completion="3",
                               feedback="Wrong.", kind="judgment", score=0.0)
    with pytest.raises(ValueError, match="record 0: answer does not start with one of"):
        feedback.judge_sft_pairs(template, [wrong])
