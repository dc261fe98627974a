"""A reward model trained by fbjax (``ModelConfig.reward_head``) as a :class:`~.provider.Scorer`.

The score of a response is the reward head's output at its last token given the prompt
(:func:`fbjax.evaluation.sequence_rewards`), the Bradley-Terry reward of Stiennon et al. 2020
(arXiv 2009.01325, Eq. 1). Combine with :class:`~.provider.Preferences` (pairs by score),
:class:`~.provider.Thumbs` (labels by threshold) or :class:`~.provider.Rankings`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fbjax import evaluation
from fbjax.data import encode, packing
from fbjax.feedback.provider import Responses, split_scores
from fbjax.models.config import ModelConfig
from fbjax.objectives.logprobs import CHUNK


def response_groups(batch: Responses, tokenizer: Any) -> list[packing.Group]:
    """One token group per prompt (prompt ids, one completion per response), encoded as
    training encodes completions (EOS appended)."""
    return [
        packing.Group(encode.prompt_ids(tokenizer, batch.prompt_text(i)),
                      tuple(encode.completion_ids(tokenizer, t) for t in group))
        for i, group in enumerate(batch.responses)
    ]


@dataclasses.dataclass(frozen=True, eq=False)
class RewardModelScores:
    """Scores from a reward model's parameters (e.g. ``analysis.load_policy(rm_workdir)``)."""

    params: Any = dataclasses.field(repr=False)
    model_config: ModelConfig
    tokenizer: Any = dataclasses.field(repr=False)
    rows: int = 64
    chunk_size: int = CHUNK

    def __post_init__(self):
        if not self.model_config.reward_head:
            raise ValueError("RewardModelScores needs a reward model (model.reward_head=True)")

    def score(self, batch: Responses) -> list[np.ndarray]:
        groups = response_groups(batch, self.tokenizer)
        flat = evaluation.sequence_rewards(self.params, self.model_config, groups,
                                           rows=self.rows, chunk_size=self.chunk_size)
        return split_scores(flat, batch)
