"""A finished stage's evaluation is cached under a name that says how it was evaluated."""

from __future__ import annotations

from fbjax.run import sim_feedback
from fbjax.run.config import StageEval
from fbjax.run.stages import eval_cache_name


def test_default_evaluation_keeps_the_plain_name():
    assert eval_cache_name("DPO", StageEval()) == "DPO.json"


def test_another_prompt_is_another_cache_file():
    # tools/sami_principled_start.py evaluates one trained stage under each principle in turn:
    # the second must not read back the first's numbers.
    first = eval_cache_name("SAMI", StageEval(prompt=sim_feedback.sami_rendering(0)))
    second = eval_cache_name("SAMI", StageEval(prompt=sim_feedback.sami_rendering(1)))
    assert first != second
    assert first.startswith("SAMI.") and first.endswith(".json") and first != "SAMI.json"
    # The same evaluation, built again, finds its cache.
    assert first == eval_cache_name("SAMI", StageEval(prompt=sim_feedback.sami_rendering(0)))


def test_another_evaluation_sampling_or_prompt_count_is_another_cache_file():
    import dataclasses

    from fbjax.run.config import EvalStage

    plain = eval_cache_name("SAMI", StageEval(), EvalStage())
    assert plain == "SAMI.json"
    # The evaluation stage's name says where its files live, not how it evaluates.
    assert eval_cache_name("SAMI", StageEval(), EvalStage(name="eval_again")) == plain
    default = EvalStage()
    greedy = dataclasses.replace(default, sampling=dataclasses.replace(default.sampling,
                                                                        temperature=0.0))
    names = {plain,
             eval_cache_name("SAMI", StageEval(), greedy),
             eval_cache_name("SAMI", StageEval(), dataclasses.replace(default, num_prompts=64)),
             eval_cache_name("SAMI", StageEval(), dataclasses.replace(default, baseline="pre"))}
    assert len(names) == 4
