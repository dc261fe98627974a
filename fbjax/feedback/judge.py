"""A local judge: a language model prompted to write feedback on the policy's responses.

The judge is any checkpoint fbjax loads from a local directory (:func:`load_judge`: a Hugging
Face checkpoint, an ``fbjax convert`` output or an fbjax run's workdir; nothing is downloaded).
A template renders the judge's input and parses its answer into a record:

* :class:`PairwiseTemplate` - "which response is better, A or B?" -> ``PairedExample``
  (optionally asked in both orders, keeping only consistent verdicts, against the position
  bias LLM judges show: Zheng et al. 2023, arXiv 2306.05685, Sec. 3.3);
* :class:`CritiqueTemplate` - free-text criticism -> ``FeedbackExample(kind="critique")``
  (ILF's feedback, Scheurer et al. 2023, arXiv 2303.16755);
* :class:`JudgmentTemplate` - a verdict from a fixed set of labels, each with a score ->
  ``FeedbackExample(kind="judgment", score=...)`` (CUT's judgments, Xu et al. 2023,
  arXiv 2312.14591);
* :class:`RefinementTemplate` - a rewritten response -> ``FeedbackExample(kind="refinement")``.

Answers that do not parse are never dropped silently: each is a :class:`~.provider.Failure`
with the raw answer, and ``feedback/unparsed`` counts them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from fbjax import evaluation, sampling
from fbjax.data import examples as ex
from fbjax.data.encode import default_prompt_text
from fbjax.feedback.provider import Failure, Feedback, Responses, Unparseable, _meta, _stats
from fbjax.models.config import ModelConfig


def _render(text: str, **fields: str) -> str:
    """``str.format`` with only the named fields, so other braces in a template are an error
    naming the field rather than a silent KeyError deep in generation."""
    try:
        return text.format(**fields)
    except (KeyError, IndexError) as e:
        raise ValueError(f"judge template {text!r}: unknown field {e}; available: "
                         f"{sorted(fields)}") from None


@dataclasses.dataclass(frozen=True)
class CritiqueTemplate:
    """The judge writes a critique of one response; any non-empty answer is a critique."""

    text: str = "{prompt}{response}\nCritique:"

    def render(self, prompt: str, response: str, meta: Mapping[str, Any]) -> str:
        return _render(self.text, prompt=prompt, response=response)

    def record(self, prompt: ex.Prompt, response: str, answer: str,
               meta: Mapping[str, Any]) -> ex.FeedbackExample:
        critique = answer.strip()
        if not critique:
            raise Unparseable("empty critique", answer)
        return ex.FeedbackExample(prompt=prompt, completion=response, feedback=critique,
                                  kind="critique", meta=meta)

    def sft_pairs(self, record: ex.FeedbackExample) -> list[tuple[str, str]]:
        """What a judge trained to write this record's critique sees and writes."""
        return [(self.render(default_prompt_text(record.prompt), record.completion, {}),
                 record.feedback)]


@dataclasses.dataclass(frozen=True)
class JudgmentTemplate:
    """The judge's answer must start with one of ``labels`` (longest match first, case
    sensitive); the label's value is the record's score, the whole answer its feedback."""

    text: str = "{prompt}{response}\nJudgment:"
    labels: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"Correct": 1.0, "Incorrect": 0.0})

    def render(self, prompt: str, response: str, meta: Mapping[str, Any]) -> str:
        return _render(self.text, prompt=prompt, response=response)

    def record(self, prompt: ex.Prompt, response: str, answer: str,
               meta: Mapping[str, Any]) -> ex.FeedbackExample:
        said = answer.strip()
        for label in sorted(self.labels, key=len, reverse=True):
            if said.startswith(label):
                return ex.FeedbackExample(prompt=prompt, completion=response, feedback=said,
                                          kind="judgment", score=float(self.labels[label]),
                                          meta=meta)
        raise Unparseable(f"answer does not start with one of {sorted(self.labels)}", answer)

    def sft_pairs(self, record: ex.FeedbackExample) -> list[tuple[str, str]]:
        """The judge's input and the record's verdict, which must start with a label (the
        record's ``score`` may be finer than the labels, e.g. the simulator's partial credit,
        so it is not compared)."""
        self.record(record.prompt, record.completion, record.feedback, {})
        return [(self.render(default_prompt_text(record.prompt), record.completion, {}),
                 record.feedback)]


@dataclasses.dataclass(frozen=True)
class RefinementTemplate:
    """The judge rewrites a response; ``{feedback}`` in the template is filled from the
    response's metadata (``meta["feedback"]``, e.g. a critique from an earlier call), which
    also becomes the record's ``feedback``."""

    text: str = "{prompt}{response}\nFeedback: {feedback}\nImproved:"

    def render(self, prompt: str, response: str, meta: Mapping[str, Any]) -> str:
        return _render(self.text, prompt=prompt, response=response,
                       feedback=str(meta.get("feedback", "")))

    def record(self, prompt: ex.Prompt, response: str, answer: str,
               meta: Mapping[str, Any]) -> ex.FeedbackExample:
        refined = answer.strip()
        if not refined:
            raise Unparseable("empty refinement", answer)
        return ex.FeedbackExample(prompt=prompt, completion=response,
                                  feedback=str(meta.get("feedback", "")), kind="refinement",
                                  refinement=refined, meta=meta)

    def sft_pairs(self, record: ex.FeedbackExample) -> list[tuple[str, str]]:
        """The judge's input (with the record's feedback) and the record's refinement."""
        if record.refinement is None:
            raise ValueError("a refinement judge is trained on records with a refinement")
        return [(self.render(default_prompt_text(record.prompt), record.completion,
                             {"feedback": record.feedback}), record.refinement)]


@dataclasses.dataclass(frozen=True)
class PairwiseTemplate:
    """The judge names the better of two responses: its answer must start with ``first`` or
    ``second`` (then a non-word character or the end)."""

    text: str = "{prompt}\nA: {first}\nB: {second}\nBetter:"
    first: str = "A"
    second: str = "B"

    def render_pair(self, prompt: str, a: str, b: str) -> str:
        return _render(self.text, prompt=prompt, first=a, second=b)

    def verdict(self, answer: str) -> int:
        """0 if the first response is preferred, 1 if the second; else :class:`Unparseable`."""
        said = answer.strip()
        for index, label in enumerate((self.first, self.second)):
            if re.match(re.escape(label) + r"(\W|$)", said):
                return index
        raise Unparseable(f"answer does not start with {self.first!r} or {self.second!r}",
                          answer)

    def sft_pairs(self, record: ex.PairedExample) -> list[tuple[str, str]]:
        """Both orders of the pair, so the judge learns no position preference."""
        prompt = default_prompt_text(record.prompt)
        return [(self.render_pair(prompt, record.chosen, record.rejected), self.first),
                (self.render_pair(prompt, record.rejected, record.chosen), self.second)]


PerResponseTemplate = CritiqueTemplate | JudgmentTemplate | RefinementTemplate


@dataclasses.dataclass(frozen=True, eq=False)
class LocalJudge:
    """A judge model behind the provider interface.

    ``template`` decides what it writes. A per-response template gives one record per response;
    a :class:`PairwiseTemplate` compares responses ``(0, 1), (2, 3), ...`` of each prompt (an
    odd one out is a failure) and, with ``both_orders``, asks again with the two swapped and
    keeps the pair only when both verdicts agree (disagreements are failures). Generation is
    greedy by default (``sampling_config``); ``seed`` fixes the key when it is not.
    """

    params: Any = dataclasses.field(repr=False)
    model_config: ModelConfig
    tokenizer: Any = dataclasses.field(repr=False)
    template: PerResponseTemplate | PairwiseTemplate
    sampling_config: sampling.SamplingConfig = dataclasses.field(
        default_factory=lambda: sampling.SamplingConfig(max_new_tokens=64, temperature=0.0))
    both_orders: bool = False
    seed: int = 0
    batch_size: int = 64
    source: str = "judge"

    def generate(self, inputs: Sequence[str]) -> list[str]:
        """The judge's answers to rendered inputs (stop token removed)."""
        if not inputs:
            return []
        # Pad the batch to a power of two (repeating the last input, whose extra answers are
        # dropped) so calls with different numbers of responses reuse one compilation.
        n = len(inputs)
        rows = min(self.batch_size, 1 << max(n - 1, 0).bit_length())
        padded = list(inputs) + [inputs[-1]] * (-n % rows)
        out = evaluation.sample(self.params, self.model_config, self.tokenizer, padded,
                                sampling_config=self.sampling_config,
                                rng=jax.random.key(self.seed), batch_size=rows)
        return list(out.texts[:n])

    def __call__(self, batch: Responses) -> Feedback:
        if isinstance(self.template, PairwiseTemplate):
            return self._pairwise(batch, self.template)
        flat = batch.flat()
        answers = self.generate([
            self.template.render(batch.prompt_text(i), t, batch.metadata[i])
            for i, _, t in flat])
        records, failures = [], []
        for (i, k, t), answer in zip(flat, answers):
            meta = _meta(self.source, i, response_index=k, **_scalars(batch.metadata[i]))
            try:
                records.append(self.template.record(batch.prompts[i], t, answer, meta))
            except Unparseable as e:
                failures.append(Failure(i, k, e.reason, e.raw))
        return Feedback(tuple(records), tuple(failures), None,
                        _stats(batch, records, failures, None))

    def _pairwise(self, batch: Responses, template: PairwiseTemplate) -> Feedback:
        jobs, failures = [], []
        for i, group in enumerate(batch.responses):
            for a in range(0, len(group) - 1, 2):
                jobs.append((i, a, a + 1))
            if len(group) % 2:
                failures.append(Failure(i, len(group) - 1, "odd response out: no pair"))
        inputs = [template.render_pair(batch.prompt_text(i), batch.responses[i][a],
                                       batch.responses[i][b]) for i, a, b in jobs]
        if self.both_orders:
            inputs += [template.render_pair(batch.prompt_text(i), batch.responses[i][b],
                                            batch.responses[i][a]) for i, a, b in jobs]
        answers = self.generate(inputs)
        records, inconsistent = [], 0
        for n, (i, a, b) in enumerate(jobs):
            try:
                winner = (a, b)[template.verdict(answers[n])]
                if self.both_orders:
                    again = (b, a)[template.verdict(answers[len(jobs) + n])]
                    if again != winner:
                        inconsistent += 1
                        raise Unparseable("verdict changes with the order of the responses",
                                          f"{answers[n]} | {answers[len(jobs) + n]}")
            except Unparseable as e:
                failures.append(Failure(i, a, e.reason, e.raw))
                continue
            loser = b if winner == a else a
            group = batch.responses[i]
            records.append(ex.PairedExample(
                prompt=batch.prompts[i], chosen=group[winner], rejected=group[loser],
                meta=_meta(self.source, i, chosen_index=winner, rejected_index=loser,
                           **_scalars(batch.metadata[i]))))
        return Feedback(tuple(records), tuple(failures), None,
                        _stats(batch, records, failures, None, inconsistent=inconsistent))


def judge_sft_pairs(template: PerResponseTemplate | PairwiseTemplate,
                    records: Sequence[ex.Example]) -> list[tuple[str, str]]:
    """(input, answer) texts for training a judge (``fbjax.data.encode.sft``) on feedback
    records, e.g. the simulator oracle's critiques, rendered by the same ``template`` the judge
    is later prompted with, so training and use see identical inputs."""
    out = []
    for i, record in enumerate(records):
        try:
            out += template.sft_pairs(record)
        except (ValueError, Unparseable) as e:
            raise ValueError(f"judge training record {i}: {e}") from None
    return out


def judge_win_rate(judge: Any, prompts: Sequence[str], a: Sequence[str],
                   b: Sequence[str]) -> dict[str, float]:
    """How often a pairwise judge prefers ``a[i]`` over ``b[i]``: a win counts 1, a loss 0, and
    a verdict that does not parse (or, with ``both_orders``, changes with the order) 1/2; the
    number of those is reported as ``undecided``. ``judge`` is a :class:`LocalJudge` with a
    :class:`PairwiseTemplate`, or any provider whose ``PairedExample`` records carry
    ``meta["chosen_index"]`` and ``meta["prompt_index"]``."""
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} and {len(b)} responses")
    if not prompts:
        raise ValueError("judge win rate of no responses")
    fb = judge(Responses.of(prompts, [[x, y] for x, y in zip(a, b)]))
    wins = sum(r.meta["chosen_index"] == 0 for r in fb.records)
    undecided = len(prompts) - len(fb.records)
    return {"win_rate": (wins + 0.5 * undecided) / len(prompts),
            "decided": float(len(fb.records)), "undecided": float(undecided)}


# Keys the judge writes into a record's meta itself; a response's metadata (e.g. a dataset
# record's own "source") does not override them.
_OWN_META = frozenset({"source", "prompt_index", "response_index", "chosen_index",
                       "rejected_index"})


def _scalars(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-scalar entries of a response's metadata (records' ``meta`` holds only those),
    less the keys the judge sets itself."""
    return {k: v for k, v in meta.items() if k not in _OWN_META
            and (v is None or isinstance(v, (str, int, float, bool)))}


def load_judge(
    path: str | os.PathLike,
    template: PerResponseTemplate | PairwiseTemplate,
    *,
    step: int | None = None,
    **options: Any,
) -> LocalJudge:
    """A :class:`LocalJudge` from a local directory: an fbjax run's workdir (or its
    ``checkpoints/``; the newest complete step unless ``step``), a Hugging Face checkpoint
    (``config.json`` + safetensors + tokenizer) or an ``fbjax convert`` output. Never downloads:
    a path that is not an existing directory is an error. ``options`` go to :class:`LocalJudge`.
    """
    from fbjax import analysis
    from fbjax.models.checkpoints import run_checkpoint_root
    from fbjax.tokenizers import load_tokenizer
    from fbjax.models import hf
    from fbjax.models import io as model_io

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"judge checkpoint {path!r} is not a local directory (judges "
                                "are never downloaded)")
    # A run's workdir also holds a config.json (the experiment's), so its checkpoints decide.
    is_run = run_checkpoint_root(path) is not None
    if is_run or not os.path.isfile(os.path.join(path, hf.CONFIG_FILE)):

        policy = analysis.load_policy(path, step)
        if policy.tokenizer is None:
            raise ValueError(f"judge run {path}: no tokenizer saved in the workdir")
        return LocalJudge(policy.params, policy.model_config, policy.tokenizer, template,
                          **options)
    if os.path.isfile(os.path.join(path, model_io.PARAMS_FILE)):
        config, params = model_io.load_params(path)
    else:
        config, params = hf.load_hf(path)
    if config.reward_head:
        raise ValueError(f"judge checkpoint {path} is a reward model (no language-model head); "
                         "use feedback.RewardModelScores for it")
    params = jax.tree.map(jax.numpy.asarray, params)
    return LocalJudge(params, config, load_tokenizer(path), template, **options)
