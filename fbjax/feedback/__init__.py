"""Feedback providers: given prompts and the policy's responses, return typed feedback records.

One interface (:class:`FeedbackProvider`: ``provider(Responses) -> Feedback``), several sources:

* a reward model trained by fbjax - :class:`RewardModelScores` with :class:`Preferences`,
  :class:`Thumbs` or :class:`Rankings`;
* a local judge model - :class:`LocalJudge` / :func:`load_judge` with a template
  (:mod:`fbjax.feedback.judge`);
* program execution against unit tests in a sandbox - :class:`ProgramExecution`
  (:mod:`fbjax.feedback.programs`, :mod:`fbjax.feedback.sandbox`);
* the simulator's oracle - :class:`OracleScores`, :class:`Oracle`;
* any Python callable - :class:`ScoreFunction` (scores), :class:`PerResponse` (records).
"""

from fbjax.feedback.judge import (
    CritiqueTemplate,
    JudgmentTemplate,
    LocalJudge,
    PairwiseTemplate,
    RefinementTemplate,
    judge_sft_pairs,
    judge_win_rate,
    load_judge,
)
from fbjax.feedback.oracle import Oracle, OracleScores
from fbjax.feedback.programs import (
    CodeProblem,
    ProgramExecution,
    humaneval_responses,
    load_humaneval,
)
from fbjax.feedback.provider import (
    Failure,
    Feedback,
    FeedbackProvider,
    PerResponse,
    Preferences,
    Rankings,
    Responses,
    ScoreFunction,
    Scorer,
    Thumbs,
    Unparseable,
)
from fbjax.feedback.reward_model import RewardModelScores
from fbjax.feedback.sandbox import Execution, SandboxLimits, run_python

__all__ = [
    "CodeProblem", "CritiqueTemplate", "Execution", "Failure", "Feedback", "FeedbackProvider",
    "JudgmentTemplate", "LocalJudge", "Oracle", "OracleScores", "PairwiseTemplate",
    "PerResponse", "Preferences", "ProgramExecution", "Rankings", "RefinementTemplate",
    "Responses", "RewardModelScores", "SandboxLimits", "ScoreFunction", "Scorer", "Thumbs",
    "Unparseable", "humaneval_responses", "judge_sft_pairs", "judge_win_rate", "load_humaneval", "load_judge", "run_python",
]
