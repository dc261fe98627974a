"""What the papers' online rounds make of the policy's samples, where the feedback is not a
judge's or a scorer's answer but the round's own data (``fbjax.run.config.OnlineStage``):
providers that pair a sample with its dataset record (DRIFT, D2O), principle-conditioned
samples (SAMI), scoped revisions (C3PO), an answer verifier (NFT), and the encoders that turn
each method's records into token groups.

Records carry the dataset prompt the policy answered (``meta["prompt"]`` of
:class:`~fbjax.run.online.DatasetPrompts`), not a context it was sampled under, because these
methods train on the original prompt.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fbjax.data import encode, language
from fbjax.data import examples as ex
from fbjax.data.packing import Group
from fbjax.feedback.provider import (Failure, Feedback, PerResponse, Responses, Unparseable,
                                     _stats)
from fbjax.run.online import MissingProvider, bind_provider, check_provider


def _prompt(meta: Mapping[str, Any]) -> ex.Prompt:
    return ex.user_prompt(meta["prompt"])


def _response(response: str) -> str:
    if not response.strip():
        raise Unparseable("empty response")
    return response


# ----------------------------------------------------------------------------- DRIFT, D2O


def drift_context(prompt: str, meta: Mapping[str, Any]) -> str:
    """DRIFT's regeneration context (Wang et al. 2025, arXiv:2510.02341; released
    ``gen-drift.py``): the conversation, the dissatisfying assistant turn, the user's feedback,
    and an instruction to improve on it. The pair is trained on the original prompt."""
    return (f"{prompt}\nAssistant: {meta['completion']}\nUser: {meta['feedback']}\nSystem: "
            "Based on the user's latest feedback, please provide an improved response that "
            "addresses their concerns.\nAssistant: ")


def over_negative(prompt: ex.Prompt, response: str, meta: Mapping[str, Any]) -> ex.PairedExample:
    """The policy's sample preferred to the dataset record's bad response (``meta["completion"]``:
    DRIFT's dissatisfying turn, D2O's human negative), on the record's own prompt."""
    del prompt
    return ex.PairedExample(prompt=_prompt(meta), chosen=_response(response),
                            rejected=meta["completion"], meta={"source": "policy sample"})


OVER_NEGATIVE = PerResponse(over_negative)


def d2o_groups(records: Sequence[ex.PairedExample], tokenizer, *,
               samples: int | None = None) -> list[Group]:
    """D2O groups (Duan et al. 2024, arXiv:2403.03419): the human negative, then the ``samples``
    self-generated responses to its prompt (consecutive records sharing prompt and negative);
    a prompt with fewer usable samples (an empty one was a failure) is left out. ``None``: the
    largest group's size, i.e. the stage's samples per prompt."""
    runs, run = [], []
    for r in records:
        if run and (r.prompt, r.rejected) != (run[0].prompt, run[0].rejected):
            runs.append(run)
            run = []
        run.append(r)
    if run:
        runs.append(run)
    if samples is None:
        samples = max((len(r) for r in runs), default=0)
    groups = []

    for run in runs:
        if len(run) == samples:
            text = language.prompt_text(run[0].prompt)
            groups.append(Group(encode.prompt_ids(tokenizer, text), tuple(
                encode.completion_ids(tokenizer, t)
                for t in (run[0].rejected, *(r.chosen for r in run)))))
    return groups


# ----------------------------------------------------------------------------- SAMI


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstitutionPrompts:
    """SAMI's sampling (Fränken et al. 2024, arXiv:2404.14313): each dataset query under each of
    ``constitutions`` (``language.sami_prompt``), one response each. Round r takes the
    ``num_prompts`` queries after round r - 1's. The paper's constitutions were written by
    another model; none ship with fbjax, so empty ``constitutions`` is an error naming the
    field."""

    constitutions: tuple[str, ...] = ()
    num_prompts: int | None = None

    def check(self, path):
        if len(self.constitutions) < 2:
            raise MissingProvider(f"{path}.constitutions: SAMI samples under at least two "
                                  "constitutions and none are given (the paper's were written "
                                  "by another model); set them")

    def prompts(self, task, seed, round_index, data=None):
        from fbjax.run.online import DatasetPrompts

        self.check("prompts")
        queries, metadata = DatasetPrompts(num_prompts=self.num_prompts).prompts(
            task, seed, round_index, data)
        texts, meta = [], []
        for q, m in zip(queries, metadata):
            for c in self.constitutions:
                texts.append(language.sami_prompt(q, c))
                meta.append({**m, "constitution": c})
        return texts, meta


def under_constitution(prompt, response, meta) -> ex.FeedbackExample:
    """A response and the constitution it was sampled under (``kind="principle"``)."""
    del prompt
    return ex.FeedbackExample(prompt=_prompt(meta), completion=_response(response),
                              feedback=meta["constitution"], kind="principle")


UNDER_CONSTITUTION = PerResponse(under_constitution)


def sami_online_groups(records: Sequence[ex.FeedbackExample], tokenizer) -> list[Group]:
    """SAMI's matrices from one round: per query, its responses under each constitution, in the
    order sampled; a query missing one (an empty response) is left out, since ``L`` must be
    square."""
    by_query: dict[str, list] = {}
    for r in records:
        by_query.setdefault(language.prompt_text(r.prompt), []).append(r)
    n = max((len({r.feedback for r in rs}) for rs in by_query.values()), default=0)
    extra = [q for q, rs in by_query.items() if len(rs) > n]
    if extra:  # several samples under one constitution: the matrix is one response each
        raise ValueError(f"SAMI takes one response per (query, constitution); {extra[0]!r} has "
                         f"{len(by_query[extra[0]])} for {n} constitutions: set "
                         "samples_per_prompt=1")
    data = [(q, tuple(r.feedback for r in rs), tuple(r.completion for r in rs))
            for q, rs in by_query.items() if len(rs) == n]
    return language.sami_groups(data, tokenizer)


# ----------------------------------------------------------------------------- NFT


_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (one level of nested braces)."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


def boxed_answer_correct(prompt: str, response: str, meta: Mapping[str, Any]) -> float:
    """1 when the response's last boxed answer equals the record's reference answer
    (``meta["answer"]``, whitespace removed), else 0: exact match only, stricter than the
    paper's math verifier (which also accepts equivalent forms)."""
    del prompt
    if "answer" not in meta:
        raise ValueError("the NFT verifier needs each prompt's reference answer in its record's "
                         "meta['answer']")
    got = last_boxed(response)
    norm = lambda s: re.sub(r"\s+", "", str(s))  # noqa: E731
    return float(got is not None and norm(got) == norm(meta["answer"]))


def nft_online_groups(records: Sequence[ex.BinaryExample], tokenizer) -> list[Group]:
    """NFT groups (Chen et al. 2025, arXiv:2505.18116): each prompt's verified samples with
    their labels and the group's accuracy; all-right and all-wrong groups are dropped, as the
    released trainer's group filter does."""
    by_prompt: dict[str, list] = {}
    for r in records:
        by_prompt.setdefault(language.prompt_text(r.prompt), []).append(r)
    groups = []
    for text, rs in by_prompt.items():
        labels = tuple(float(r.label) for r in rs)
        accuracy = float(np.mean(labels))
        if accuracy in (0.0, 1.0):
            continue
        groups.append(Group(encode.prompt_ids(tokenizer, text),
                            tuple(encode.completion_ids(tokenizer, r.completion) for r in rs),
                            {"labels": labels, "group_accuracy": (accuracy,) * len(rs)}))
    return groups


# ----------------------------------------------------------------------------- C3PO


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScopedRevisions:
    """C3PO's data (Stephan et al. 2024, arXiv:2402.10893): the original model's completion of
    each prompt; in scope (``meta["scope"] == "in"``) ``reviser`` rewrites it to follow
    ``feedback`` (a judge with ``RefinementTemplate``) and the record is (revised, original);
    near and out of scope the original completion is kept for likelihood (a thumbs-up record
    with its scope). Empty ``feedback`` is an error naming the field."""

    reviser: Any
    feedback: str = ""

    def check(self, path):
        if not self.feedback:
            raise MissingProvider(f"{path}.feedback: C3PO needs the verbal feedback its prompts "
                                  "were generated for; set it")
        check_provider(self.reviser, f"{path}.reviser")

    def bind(self, path, outputs, tokenizer):
        self.check(path)
        return dataclasses.replace(
            self, reviser=bind_provider(self.reviser, f"{path}.reviser", outputs, tokenizer))

    def __call__(self, batch: Responses) -> Feedback:
        flat = batch.flat()
        scopes = [str(batch.metadata[i].get("scope", "")) for i, _, _ in flat]
        unknown = sorted({s for s in scopes if s not in ("in", "near", "out")})
        if unknown:
            raise ValueError(f"C3PO records need meta['scope'] in ('in', 'near', 'out'), got "
                             f"{unknown}")
        inside = [(i, k, t) for (i, k, t), s in zip(flat, scopes) if s == "in"]
        ask = Responses(tuple(batch.prompts[i] for i, _, _ in inside),
                        tuple((t,) for _, _, t in inside),
                        tuple({**batch.metadata[i], "feedback": self.feedback}
                              for i, _, _ in inside))
        revised = {r.meta["prompt_index"]: r for r in self.reviser(ask).records} if inside \
            else {}
        records, failures = [], []
        for n, (i, k, t) in enumerate(inside):
            r = revised.get(n)
            if r is None or r.refinement == t or not t.strip():
                failures.append(Failure(i, k, "no revision differing from the original"))
                continue
            records.append(ex.PairedExample(prompt=_prompt(batch.metadata[i]),
                                            chosen=r.refinement, rejected=t,
                                            meta={"scope": "in"}))
        for (i, k, t), s in zip(flat, scopes):
            if s != "in":
                if not t.strip():
                    failures.append(Failure(i, k, "empty response"))
                    continue
                records.append(ex.BinaryExample(prompt=_prompt(batch.metadata[i]), completion=t,
                                                label=True, meta={"scope": s}))
        return Feedback(tuple(records), tuple(failures), None,
                        _stats(batch, records, failures, None))


def c3po_online_groups(records: Sequence[ex.Example], tokenizer) -> list[Group]:
    """``language.c3po_groups`` from :class:`ScopedRevisions`' records."""
    inside = [r for r in records if r.meta.get("scope") == "in"]
    near = [(r.prompt, r.completion) for r in records if r.meta.get("scope") == "near"]
    out = [(r.prompt, r.completion) for r in records if r.meta.get("scope") == "out"]
    return language.c3po_groups(inside, near, out, tokenizer)
