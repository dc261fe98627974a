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
