"""The simulator's oracle as a feedback provider (:mod:`fbjax.sim`).

:class:`OracleScores` scores responses with ``task.reward`` (for :class:`~.provider.Preferences`,
:class:`~.provider.Thumbs`, :class:`~.provider.Rankings`); :class:`Oracle` wraps any emitter of
:mod:`fbjax.sim.feedback` that takes ``(task, prompts, completions)`` - ``critiques``,
``judgments``, ``refinements``, ``thumbs``, ``negatives`` - so online stages on the simulator ask
the oracle through the same interface as a reward model or a judge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fbjax.feedback.provider import Feedback, Responses, _stats, split_scores
from fbjax.sim.task import Task


@dataclasses.dataclass(frozen=True)
class OracleScores:
    """``task.reward(prompt, response)`` per response (in ``[0, 1]``, 1 = fully correct)."""

    task: Task

    def score(self, batch: Responses) -> list[np.ndarray]:
        flat = [self.task.reward(batch.prompt_text(i), t) for i, _, t in batch.flat()]
        return split_scores(np.asarray(flat, np.float64), batch)


@dataclasses.dataclass(frozen=True)
class Oracle:
    """A :mod:`fbjax.sim.feedback` emitter over every response, e.g.
    ``Oracle(task, sim.feedback.critiques)`` or
    ``Oracle(task, functools.partial(sim.feedback.thumbs, threshold=1.0))``."""

    task: Task
    emit: Callable[[Task, Sequence[str], Sequence[str]], Sequence[Any]]

    def __call__(self, batch: Responses) -> Feedback:
        flat = batch.flat()
        prompts = [batch.prompt_text(i) for i, _, _ in flat]
        records = tuple(self.emit(self.task, prompts, [t for _, _, t in flat]))
        scores = OracleScores(self.task).score(batch)
        return Feedback(records, (), tuple(scores), _stats(batch, records, (), scores))
