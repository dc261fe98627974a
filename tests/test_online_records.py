"""The pieces the papers' online stages are built from (``fbjax.run.online``,
``fbjax.run.online_records``): prompt sources, provider specs that must be given a stand-in,
ILF's critique -> refinement provider, and each method's records -> token groups. Fakes stand
in for judges; every expected value is written out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import ilf_scheurer2023
from fbjax.data import examples as ex
from fbjax.feedback import LocalJudge, RefinementTemplate
from fbjax.feedback.provider import Feedback, Responses
from fbjax.objectives.language import SCOPE_IN_CHOSEN, SCOPE_IN_REJECTED, SCOPE_NEAR
from fbjax.run import online, online_records, stages
from fbjax.run.online import MissingProvider


class Tok:
    """One token per character (code point + 3); 0-2 are pad, BOS, EOS."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 300

    def encode(self, text):
        return [ord(c) + 3 for c in text]


def ids(text, *, bos=False, eos=False):
    return [1] * bos + [ord(c) + 3 for c in text] + [2] * eos


# ----------------------------------------------------------------------------- prompt sources


@dataclasses.dataclass(frozen=True)
class FakeData:
    records: tuple

    def examples(self):
        return list(self.records)

    def prompt_text(self):
        return lambda prompt: "Q:" + prompt[-1][1]


def test_dataset_prompts_take_the_next_slice_each_round_and_wrap():
    data = FakeData(tuple(ex.NegativeExample(ex.user_prompt(f"p{i}"), f"bad{i}", meta={"n": i})
                          for i in range(5)))
    source = online.DatasetPrompts(num_prompts=2)
    assert source.prompts(None, 0, 1, data)[0] == ["Q:p0", "Q:p1"]
    texts, meta = source.prompts(None, 0, 3, data)
    assert texts == ["Q:p4", "Q:p0"]
    assert meta == [{"prompt": "Q:p4", "n": 4, "completion": "bad4"},
                    {"prompt": "Q:p0", "n": 0, "completion": "bad0"}]
    rendered, _ = online.DatasetPrompts(render=lambda t, m: f"{t}|{m['completion']}").prompts(
        None, 0, 1, data)
    assert rendered == [f"Q:p{i}|bad{i}" for i in range(5)]
    with pytest.raises(ValueError, match="set the stage's data"):
        source.prompts(None, 0, 1, None)


def test_constitution_prompts_ask_each_query_under_each_constitution():
    data = FakeData((ex.NegativeExample(ex.user_prompt("q"), "x"),))
    texts, meta = online_records.ConstitutionPrompts(constitutions=("be kind", "be rude")).prompts(
        None, 0, 1, data)
    assert texts == ["be kind\nQ:q", "be rude\nQ:q"]
    assert [m["constitution"] for m in meta] == ["be kind", "be rude"]
    with pytest.raises(MissingProvider, match=r"^stages\.train\.prompts\.constitutions: SAMI"):
        online.check_provider(online_records.ConstitutionPrompts(), "stages.train.prompts")


# ----------------------------------------------------------------------------- provider specs


def test_a_judge_not_given_fails_naming_its_set_path_before_the_run_starts(tmp_path):
    cfg = ilf_scheurer2023.get_config("paper")
    workdir = tmp_path / "run"
    with pytest.raises(MissingProvider) as err:
        stages.prepare(cfg, workdir=str(workdir), progress=False)
    assert str(err.value) == (
        "stages.train.provider.critic.checkpoint: no local judge given to stand in for human "
        "annotators' written feedback; set --set stages.train.provider.critic.checkpoint=DIR")
    assert not workdir.exists()  # refused before the checkpoint was looked up or a file written
    with pytest.raises(MissingProvider, match=r"^P: no local stand-in for a toxicity API$"):
        online.check_provider(online.Unavailable(what="a toxicity API"), "P")


def test_a_judge_from_an_earlier_stage_binds_to_its_parameters():
    spec = online.JudgeCheckpoint(template=RefinementTemplate(), stage="judge")
    trained = stages.Trained(model="MODEL", params={"w": 1}, history=[], examples=0,
                             seconds=0.0, step=0)
    judge = online.bind_provider(spec, "stages.ILF.provider", {"judge": trained}, Tok())
    assert isinstance(judge, LocalJudge)
    assert (judge.params, judge.model_config, judge.template) == ({"w": 1}, "MODEL",
                                                                    RefinementTemplate())
    with pytest.raises(ValueError, match=r"stages\.ILF\.provider\.stage='judge': no earlier"):
        online.bind_provider(spec, "stages.ILF.provider", {}, Tok())


# ----------------------------------------------------------------------------- ILF


class FakeCritic:
    """Critiques every response except "skip", as a LocalJudge writes records."""

    def __call__(self, batch):
        records = [ex.FeedbackExample(batch.prompts[i], t, f"fix {t} to apple pie",
                                      meta={"prompt_index": i, "response_index": k})
                   for i, k, t in batch.flat() if t != "skip"]
        return Feedback(tuple(records))


class FakeRefiner:
    """Candidate c of each request answers CANDIDATES[c]; records name their request."""

    CANDIDATES = ("banana", "apple pie please", "apple")

    def __call__(self, batch):
        records = [ex.FeedbackExample(batch.prompts[i], t, batch.metadata[i]["feedback"],
                                      kind="refinement",
                                      refinement=self.CANDIDATES[i % 3],
                                      meta={"prompt_index": i, "response_index": k})
                   for i, k, t in batch.flat()]
        return Feedback(tuple(records))


def test_refine_keeps_the_candidate_most_similar_to_the_feedback():
    batch = Responses.of(["p0", "p1"], [["a0", "skip"], ["b0"]])
    fb = online.Refine(critic=FakeCritic(), refiner=FakeRefiner(), candidates=3)(batch)
    # Feedback "fix X to apple pie": bag-of-words cosines of the candidates are 0 (banana),
    # 2 / sqrt(5 * 3) = .516 ("apple pie please") and 1 / sqrt(5) = .447 ("apple").
    assert [(r.completion, r.refinement, r.kind) for r in fb.records] == [
        ("a0", "apple pie please", "refinement"), ("b0", "apple pie please", "refinement")]
    assert [r.feedback for r in fb.records] == ["fix a0 to apple pie", "fix b0 to apple pie"]
    assert fb.stats["feedback/records"] == 2 and fb.stats["feedback/responses"] == 3
    unindexed = lambda b: Feedback((ex.FeedbackExample(b.prompts[0], "a0", "f"),))  # noqa: E731
    with pytest.raises(ValueError, match=r"Refine: the critic's records must name .* 1 do not"):
        online.Refine(critic=unindexed, refiner=FakeRefiner())(batch)


# ----------------------------------------------------------------------------- records -> groups


def test_drift_samples_in_context_and_trains_on_the_original_prompt():
    meta = {"prompt": "hi", "completion": "meh", "feedback": "too short"}
    context = online_records.drift_context("hi", meta)
    assert context.startswith("hi\nAssistant: meh\nUser: too short\nSystem: Based on")
    pair = online_records.over_negative(ex.user_prompt(context), "better", meta)
    assert (pair.prompt, pair.chosen, pair.rejected) == (ex.user_prompt("hi"), "better", "meh")
    fb = online_records.OVER_NEGATIVE(Responses.of([context], [["  "]], [meta]))
    assert fb.records == () and fb.failures[0].reason == "empty response"


def test_d2o_groups_put_the_negative_first_and_drop_short_groups():
    pair = lambda p, y, neg: ex.PairedExample(ex.user_prompt(p), y, neg)  # noqa: E731
    records = [pair("A", "y1", "n"), pair("A", "y2", "n"), pair("B", "z1", "m")]
    (group,) = online_records.d2o_groups(records, Tok())  # the largest group: 2 samples
    assert online_records.d2o_groups(records, Tok(), samples=1)[0].prompt.tolist() == ids(
        "B", bos=True)
    assert group.prompt.tolist() == ids("A", bos=True)
    assert [c.tolist() for c in group.completions] == [ids(t, eos=True) for t in ("n", "y1", "y2")]


def test_sami_groups_need_every_constitution_of_a_query():
    rec = lambda q, y, c: ex.FeedbackExample(ex.user_prompt(q), y, c, kind="principle")  # noqa
    records = [rec("q1", "a", "c1"), rec("q1", "b", "c2"), rec("q2", "d", "c1")]
    (group,) = online_records.sami_online_groups(records, Tok())
    # Slot i * n + j is response j under constitution i (q2 lacks c2's response: left out).
    assert [c.tolist()[-2:] for c in group.completions] == [ids(y, eos=True) for y in "abab"]
    # The contexts' shared start sits in the group's prompt, the rest before each response.
    text = ["".join(chr(t - 3) for t in group.prompt.tolist() + c.tolist() if t > 2)
            for c in group.completions]
    assert text == ["c1\nq1a", "c1\nq1b", "c2\nq1a", "c2\nq1b"]


def test_sami_refuses_several_samples_under_one_constitution():
    rec = lambda q, y, c: ex.FeedbackExample(ex.user_prompt(q), y, c, kind="principle")  # noqa
    # Two samples under c1 and one under c2: the contrastive matrix would be ragged.
    records = [rec("q1", "a", "c1"), rec("q1", "b", "c1"), rec("q1", "d", "c2")]
    with pytest.raises(ValueError, match=r"has 3 for 2 constitutions: set samples_per_prompt=1"):
        online_records.sami_online_groups(records, Tok())


def test_nft_groups_carry_labels_and_accuracy_and_drop_uniform_groups():
    rec = lambda p, y, ok: ex.BinaryExample(ex.user_prompt(p), y, ok)  # noqa: E731
    records = [rec("p", "1", True), rec("p", "2", False), rec("p", "3", False),
               rec("q", "4", True), rec("q", "5", True)]
    (group,) = online_records.nft_online_groups(records, Tok())
    assert group.slot_fields["labels"] == (1.0, 0.0, 0.0)
    np.testing.assert_allclose(group.slot_fields["group_accuracy"], (1 / 3,) * 3)


@pytest.mark.parametrize("response, correct", [
    (r"so \boxed{12}", 1.0), (r"\boxed{3} then \boxed{ 1 2 }", 1.0), (r"\boxed{\frac{1}{2}}", 0.0),
    ("12", 0.0), (r"\boxed{13}", 0.0)])
def test_boxed_answer_exact_match(response, correct):
    assert online_records.boxed_answer_correct("", response, {"answer": "12"}) == correct
    assert online_records.last_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"


def test_c3po_revises_in_scope_and_keeps_the_original_elsewhere():
    class Reviser:
        def __call__(self, batch):
            return Feedback(tuple(
                ex.FeedbackExample(batch.prompts[i], t, batch.metadata[i]["feedback"],
                                   kind="refinement", refinement=t.upper() if t != "same" else t,
                                   meta={"prompt_index": i, "response_index": k})
                for i, k, t in batch.flat()))

    provider = online_records.ScopedRevisions(reviser=Reviser(), feedback="shout")
    meta = [{"prompt": p, "scope": s} for p, s in (("a", "in"), ("b", "near"), ("c", "in"))]
    fb = provider(Responses.of(["a", "b", "c"], [["hi"], ["yo"], ["same"]], meta))
    assert [(type(r).__name__, r.meta["scope"]) for r in fb.records] == [
        ("PairedExample", "in"), ("BinaryExample", "near")]
    assert (fb.records[0].chosen, fb.records[0].rejected) == ("HI", "hi")
    assert [(f.prompt_index, f.reason) for f in fb.failures] == [
        (2, "no revision differing from the original")]
    groups = online_records.c3po_online_groups(list(fb.records), Tok())
    assert [g.slot_fields["scope"] for g in groups] == [(SCOPE_IN_CHOSEN, SCOPE_IN_REJECTED),
                                                        (SCOPE_NEAR,)]
    with pytest.raises(MissingProvider, match=r"^S\.feedback: C3PO needs the verbal feedback"):
        online.check_provider(online_records.ScopedRevisions(reviser=Reviser()), "S")


# ----------------------------------------------------------------------------- ILF's sim judge


def test_ilf_judge_data_teaches_the_oracles_critique_then_its_refinement():
    from experiments import common
    from fbjax.run import sim, sim_feedback

    ctx = sim.DataContext(tokenizer=Tok(), task=common.SIM_TASK, seed=0, stage="judge")
    groups = sim_feedback.IlfJudgeData(num_examples=3).load_in(ctx)
    text = lambda a: "".join(chr(t - 3) for t in a.tolist() if t > 2)  # noqa: E731
    assert len(groups) == 6  # 3 critiques, then 3 refinements
    pairs = [(text(g.prompt), text(g.completions[0])) for g in groups]
    for (seen, critique), (seen2, refinement) in zip(pairs[:3], pairs[3:]):
        prompt, answer = seen.removesuffix("\nFeedback:").split("=")
        prompt += "="
        assert critique == common.SIM_TASK.critique(prompt, answer)
        assert seen2 == f"{prompt}{answer}\nFeedback: {critique}\nRefinement: {prompt}"
        assert refinement == common.SIM_TASK.refine(prompt, answer)


def test_the_ilf_local_judge_tool_asks_the_judge_stage_for_feedback_and_refinements():
    import sys

    sys.path.insert(0, "tools")
    import ilf_local_judge

    cfg = ilf_local_judge.config(rounds=2)
    assert [s.name for s in cfg.stages] == ["judge", "sft", "ILF", "eval"]
    provider = cfg.main_stage.provider
    assert (provider.critic.stage, provider.refiner.stage) == ("judge", "judge")
    assert cfg.main_stage.rounds == 2 and cfg.main_stage.start == "sft"


def test_alt_samples_round_one_plain_and_later_rounds_under_the_condition():
    from experiments import alt_lloret2024

    stage = alt_lloret2024.get_config("paper").main_stage
    assert online.shown_prompts(stage, ["p"], 1) == ["p"]
    assert online.shown_prompts(stage, ["p"], 2) == [alt_lloret2024.nontoxic_prompt("p")]
    every = dataclasses.replace(stage, plain_first_round=False)
    assert online.shown_prompts(every, ["p"], 1) == [alt_lloret2024.nontoxic_prompt("p")]
