"""The feedback-provider interface, and providers built from a scoring function.

A provider answers one question: given prompts and the policy's responses, what feedback do they
get? It returns typed records from :mod:`fbjax.data.examples` (the same types the dataset readers
and the simulator emit, so feedback from any provider trains through the same encoders), plus
an account of every response that got no record and why::

    batch = Responses.of(prompts, [[y1, y2], [y3, y4]])   # K responses per prompt
    fb = provider(batch)
    fb.records      # e.g. PairedExample(prompt, chosen, rejected, meta={...})
    fb.failures     # (prompt index, response index, reason, raw answer) per response left out
    fb.stats        # {"feedback/records": ..., "feedback/unparsed": ..., ...}

Providers here turn a :class:`Scorer` (a reward model, the simulator's oracle, program
execution's pass/fail, any Python function) into preferences (:class:`Preferences`), thumbs
(:class:`Thumbs`) or rankings (:class:`Rankings`); :class:`PerResponse` wraps any callable that
writes one record per response. The local judge (:mod:`fbjax.feedback.judge`) and program
execution (:mod:`fbjax.feedback.programs`) are providers of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fbjax.data import examples as ex
from fbjax.data.encode import default_prompt_text

PromptLike = str | ex.Prompt


def as_prompt(prompt: PromptLike) -> ex.Prompt:
    """A prompt string (the policy's input, e.g. the simulator's ``"12+7="``) as one user turn."""
    return ex.user_prompt(prompt) if isinstance(prompt, str) else ex.make_prompt(prompt)


@dataclasses.dataclass(frozen=True)
class Responses:
    """What a provider is asked about: ``responses[i]`` are the policy's K_i responses to
    ``prompts[i]``; ``metadata[i]`` is what the provider may need beyond the text (e.g. unit
    tests and the entry point for program execution)."""

    prompts: tuple[ex.Prompt, ...]
    responses: tuple[tuple[str, ...], ...]
    metadata: tuple[Mapping[str, Any], ...]

    def __post_init__(self):
        if len(self.responses) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} response "
                             "groups")
        if len(self.metadata) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.metadata)} metadata "
                             "entries")
        for i, group in enumerate(self.responses):
            for k, text in enumerate(group):
                if not isinstance(text, str):
                    raise TypeError(f"responses[{i}][{k}] is {type(text).__name__}, not str")

    @classmethod
    def of(
        cls,
        prompts: Sequence[PromptLike],
        responses: Sequence[Sequence[str] | str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> Responses:
        """From prompt strings or ``Prompt`` tuples; a bare string response is one response."""
        groups = tuple((r,) if isinstance(r, str) else tuple(r) for r in responses)
        meta = tuple(dict(m) for m in metadata) if metadata is not None else (
            ({},) * len(prompts))
        return cls(tuple(as_prompt(p) for p in prompts), groups, meta)

    def prompt_text(self, i: int) -> str:
        """Prompt ``i`` as the policy saw it (one user turn verbatim, else a transcript)."""
        return default_prompt_text(self.prompts[i])

    def flat(self) -> list[tuple[int, int, str]]:
        """``(prompt index, response index, text)`` for every response, in order."""
        return [(i, k, t) for i, group in enumerate(self.responses) for k, t in enumerate(group)]


@dataclasses.dataclass(frozen=True)
class Failure:
    """A response that got no record: which one, why, and the provider's raw answer (a judge's
    unparseable text, the exception a callable raised)."""

    prompt_index: int
    response_index: int
    reason: str
    raw: str = ""


@dataclasses.dataclass(frozen=True)
class Feedback:
    """A provider's answer. ``scores[i]`` holds the per-response scores of prompt ``i`` when
    the provider scores (``None`` otherwise); ``stats`` are JSON scalars for logs."""

    records: tuple[ex.Example, ...]
    failures: tuple[Failure, ...] = ()
    scores: tuple[np.ndarray, ...] | None = None
    stats: Mapping[str, float] = dataclasses.field(default_factory=dict)


@runtime_checkable
class FeedbackProvider(Protocol):
    """Anything that maps :class:`Responses` to :class:`Feedback`."""

    def __call__(self, batch: Responses) -> Feedback: ...


@runtime_checkable
class Scorer(Protocol):
    """A scalar score per response: ``score(batch)[i][k]`` scores ``batch.responses[i][k]``."""

    def score(self, batch: Responses) -> list[np.ndarray]: ...


def split_scores(flat: np.ndarray, batch: Responses) -> list[np.ndarray]:
    """Flat per-response scores (in :meth:`Responses.flat` order) -> one array per prompt."""
    bounds = np.cumsum([len(g) for g in batch.responses])[:-1]
    return np.split(np.asarray(flat, np.float64), bounds)


def _stats(batch: Responses, records: Sequence[Any], failures: Sequence[Failure],
           scores: Sequence[np.ndarray] | None, **extra: float) -> dict[str, float]:
    out = {"feedback/responses": float(sum(len(g) for g in batch.responses)),
           "feedback/records": float(len(records)),
           "feedback/unparsed": float(len(failures))}
    flat = np.concatenate(scores) if scores else np.zeros(0)
    if flat.size:
        out["feedback/score_mean"] = float(flat.mean())
    return {**out, **{f"feedback/{k}": float(v) for k, v in extra.items()}}


def _meta(source: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"source": source, "prompt_index": i, **extra}


def _checked_scores(scorer: Scorer, batch: Responses) -> list[np.ndarray]:
    scores = [np.asarray(s, np.float64) for s in scorer.score(batch)]
    for i, (s, group) in enumerate(zip(scores, batch.responses)):
        if s.shape != (len(group),):
            raise ValueError(f"{type(scorer).__name__}: scores of prompt {i} have shape "
                             f"{s.shape}, expected ({len(group)},)")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{type(scorer).__name__}: non-finite score for prompt {i}: {s}")
    return scores


@dataclasses.dataclass(frozen=True)
class Preferences:
    """Preference pairs by score: for each prompt, the best-scored response is chosen over the
    worst (the on-policy pairs of e.g. RSO/online DPO, "best vs worst of K"); with
    ``all_pairs=True`` every pair with different scores. Pairs whose scores tie (within
    ``tie_tolerance``) or whose texts are equal carry no preference and are counted in
    ``feedback/ties``; a prompt with one response gives no pair (counted as a failure)."""

    scorer: Scorer
    all_pairs: bool = False
    tie_tolerance: float = 0.0
    source: str = "scores"

    def __call__(self, batch: Responses) -> Feedback:
        scores = _checked_scores(self.scorer, batch)
        records, failures, ties = [], [], 0
        for i, (group, s) in enumerate(zip(batch.responses, scores)):
            if len(group) < 2:
                failures.append(Failure(i, 0, "one response: nothing to compare"))
                continue
            order = sorted(range(len(group)), key=lambda k: -s[k])  # stable: ties keep order
            pairs = ([(a, b) for n, a in enumerate(order) for b in order[n + 1:]]
                     if self.all_pairs else [(order[0], order[-1])])
            for a, b in pairs:
                if s[a] - s[b] <= self.tie_tolerance or group[a] == group[b]:
                    ties += 1
                    continue
                records.append(ex.PairedExample(
                    prompt=batch.prompts[i], chosen=group[a], rejected=group[b],
                    meta=_meta(self.source, i, chosen_index=a, rejected_index=b,
                               score_chosen=float(s[a]), score_rejected=float(s[b]))))
        return Feedback(tuple(records), tuple(failures), tuple(scores),
                        _stats(batch, records, failures, scores, ties=ties))


@dataclasses.dataclass(frozen=True)
class Thumbs:
    """Thumbs up (``label=True``) iff ``score >= threshold``, one record per response."""

    scorer: Scorer
    threshold: float
    source: str = "scores"

    def __call__(self, batch: Responses) -> Feedback:
        scores = _checked_scores(self.scorer, batch)
        records = [
            ex.BinaryExample(prompt=batch.prompts[i], completion=t,
                             label=bool(scores[i][k] >= self.threshold),
                             meta=_meta(self.source, i, response_index=k,
                                        score=float(scores[i][k])))
            for i, k, t in batch.flat()
        ]
        up = sum(r.label for r in records)
        return Feedback(tuple(records), (), tuple(scores),
                        _stats(batch, records, (), scores, thumbs_up=up,
                               thumbs_up_rate=up / max(len(records), 1)))


@dataclasses.dataclass(frozen=True)
class Rankings:
    """One ranked list per prompt (best first; ties keep the sampling order)."""

    scorer: Scorer
    source: str = "scores"

    def __call__(self, batch: Responses) -> Feedback:
        scores = _checked_scores(self.scorer, batch)
        records = []
        for i, (group, s) in enumerate(zip(batch.responses, scores)):
            order = sorted(range(len(group)), key=lambda k: -s[k])
            records.append(ex.RankedExample(
                prompt=batch.prompts[i], completions=tuple(group[k] for k in order),
                scores=tuple(float(s[k]) for k in order),
                meta=_meta(self.source, i, order=",".join(map(str, order)))))
        return Feedback(tuple(records), (), tuple(scores), _stats(batch, records, (), scores))


@dataclasses.dataclass(frozen=True)
class ScoreFunction:
    """A :class:`Scorer` from any Python function ``fn(prompt_text, response, metadata) ->
    float``."""

    fn: Callable[[str, str, Mapping[str, Any]], float]

    def score(self, batch: Responses) -> list[np.ndarray]:
        flat = [float(self.fn(batch.prompt_text(i), t, batch.metadata[i]))
                for i, _, t in batch.flat()]
        return split_scores(np.asarray(flat), batch)


class Unparseable(ValueError):
    """Raised by a feedback function when it cannot produce a record for one response; the
    response is counted in :attr:`Feedback.failures` with this message, not dropped silently."""

    def __init__(self, reason: str, raw: str = ""):
        super().__init__(reason)
        self.reason, self.raw = reason, raw


@dataclasses.dataclass(frozen=True)
class PerResponse:
    """A provider from any Python function ``fn(prompt, response, metadata) -> Example``.

    ``prompt`` is the ``Prompt`` (turns); the function builds whatever record type it wants.
    It signals "no feedback for this one" by raising :class:`Unparseable` (counted as a
    failure); any other exception propagates, since it is a bug, not an answer.
    """

    fn: Callable[[ex.Prompt, str, Mapping[str, Any]], ex.Example]

    def __call__(self, batch: Responses) -> Feedback:
        records, failures = [], []
        for i, k, t in batch.flat():
            try:
                record = self.fn(batch.prompts[i], t, batch.metadata[i])
            except Unparseable as e:
                failures.append(Failure(i, k, e.reason, e.raw))
                continue
            if type(record) not in ex.KIND_OF_CLASS:
                raise TypeError(f"{getattr(self.fn, '__name__', self.fn)!r} returned "
                                f"{type(record).__name__} for prompt {i} response {k}; "
                                "expected an fbjax.data.examples record")
            records.append(record)
        return Feedback(tuple(records), tuple(failures), None,
                        _stats(batch, records, failures, None))
