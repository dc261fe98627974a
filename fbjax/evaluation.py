"""Evaluation of a policy, usable on any checkpoint's parameters.

* :func:`sequence_logps` - log-probs of given completions under given parameters;
* :func:`sequence_rewards` - a reward model's scores of given completions;
* :func:`sample` - completions (token ids and text) from the policy;
* :func:`kl_to_reference` - Monte-Carlo KL(policy || reference) from the policy's own samples
  (:func:`kl_per_sequence`: one estimate per sample);
* :func:`win_rate` - how often one set of completions beats another under an oracle
  (:func:`win_rate_from_scores`: under any scores, e.g. a reward model's or a judge's);
* :func:`preference_accuracy` - how often implicit rewards rank held-out pairs correctly;
  :func:`implicit_rewards` and :func:`preference_metrics` - the implicit rewards and margins
  ``beta * (log pi - log pi_ref)`` of chosen and rejected completions;
* :func:`response_lengths` - sampled response lengths in tokens;
* :func:`evaluate_on_task` - all of the above against a simulator task's oracle.

Every function that scores log-probs takes ``chunk_size``, the vocabulary chunk of the float32
log-softmax (``TrainConfig.logprob_chunk``): memory grows with it, not with the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fbjax import sampling
from fbjax.data import encode, packing
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder
from fbjax.objectives.logprobs import CHUNK
from fbjax.train import step as steplib


@functools.lru_cache(maxsize=16)
def _scorer(config: ModelConfig, chunk_size: int):
    model = Decoder(config)

    @jax.jit
    def score(params, batch):
        stats = steplib.sequence_stats(
            model, params, None, batch, need_reference=False, chunk_size=chunk_size
        )
        rewards = stats.rewards if stats.rewards is not None else jnp.zeros_like(stats.logps)
        return stats.logps, stats.lengths, rewards

    return score


def sequence_logps(
    params: Any,
    config: ModelConfig,
    groups: Sequence[packing.Group],
    *,
    rows: int = 64,
    chunk_size: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs and token counts of every completion, in group order (flattened)."""
    logps, lengths, _ = _score_sequences(params, config, groups, rows=rows, chunk_size=chunk_size)
    return logps, lengths


def sequence_rewards(
    params: Any,
    config: ModelConfig,
    groups: Sequence[packing.Group],
    *,
    rows: int = 64,
    chunk_size: int = CHUNK,
) -> np.ndarray:
    """A reward model's score (``ModelConfig.reward_head``) of every completion given its
    prompt, in group order (flattened)."""
    if not config.reward_head:
        raise ValueError("sequence_rewards needs a reward model (ModelConfig.reward_head=True)")
    return _score_sequences(params, config, groups, rows=rows, chunk_size=chunk_size)[2]


def _score_sequences(params, config, groups, *, rows, chunk_size):
    sequences = [
        packing.Group(g.prompt, (c,), masks=None if g.masks is None else (g.masks[k],))
        for g in groups for k, c in enumerate(g.completions)
    ]
    if not sequences:
        return (np.zeros(0, np.float32),) * 3
    longest = max(s.length(False) for s in sequences)
    seq_len = -(-longest // 16) * 16  # bucketed so repeated calls reuse one compilation
    score = _scorer(config, chunk_size)
    out = ([], [], [])
    for i in range(0, len(sequences), rows):
        chunk = sequences[i : i + rows]
        batch, used = packing.padded(chunk, seq_len=seq_len, num_rows=rows)
        for acc, value in zip(out, score(params, {k: jnp.asarray(v) for k, v in batch.items()})):
            acc.append(np.asarray(value)[:used])
    return tuple(np.concatenate(acc) for acc in out)


@dataclasses.dataclass(frozen=True)
class Samples:
    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    groups: tuple[packing.Group, ...]  # (prompt ids, sampled ids incl. the stop token)


def sample(
    params: Any,
    config: ModelConfig,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    sampling_config: sampling.SamplingConfig,
    rng: jax.Array,
    batch_size: int = 256,
) -> Samples:
    """Samples one completion per prompt; returns texts and the exact sampled token ids."""
    stop = tuple(sampling_config.stop_tokens) or (tokenizer.eos_id,)
    cfg = dataclasses.replace(sampling_config, stop_tokens=stop)
    texts, groups = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [encode.prompt_ids(tokenizer, p) for p in chunk]
        out = sampling.generate(params, config, [list(i) for i in ids], config=cfg,
                                rng=jax.random.fold_in(rng, start))
        tokens, lengths, done = (np.asarray(x) for x in (out.tokens, out.lengths, out.done))
        for p_ids, row, n, stopped in zip(ids, tokens, lengths, done):
            comp = row[: int(n)].astype(np.int32)
            if comp.size == 0:  # nothing generated: score the stop token alone
                comp = np.asarray([stop[0]], np.int32)
            text_ids = comp[:-1] if stopped else comp
            texts.append(tokenizer.decode([int(t) for t in text_ids]))
            groups.append(packing.Group(p_ids, (comp,)))
    return Samples(tuple(prompts), tuple(texts), tuple(groups))


def kl_per_sequence(
    params: Any, ref_params: Any, config: ModelConfig, samples: Samples, *,
    chunk_size: int = CHUNK,
) -> np.ndarray:
    """``log pi(y|x) - log pi_ref(y|x)`` for every sample ``y`` (float64 ``[N]``): one-sample
    estimates of ``KL(pi(.|x) || pi_ref(.|x))``, the sequence-level KL of the policy's own
    samples. Exact per sample (the sampled token ids are scored, not re-tokenised text)."""
    lp, _ = sequence_logps(params, config, samples.groups, chunk_size=chunk_size)
    lr, _ = sequence_logps(ref_params, config, samples.groups, chunk_size=chunk_size)
    return lp.astype(np.float64) - lr.astype(np.float64)


def kl_to_reference(
    params: Any, ref_params: Any, config: ModelConfig, samples: Samples, *,
    chunk_size: int = CHUNK,
) -> float:
    """``E_{y ~ policy}[log pi(y|x) - log pi_ref(y|x)]`` over the policy's own samples.

    An unbiased estimate of the sequence-level KL when the samples were drawn at temperature 1
    without top-k/top-p filtering (the mean of :func:`kl_per_sequence`).
    """
    return float(np.mean(kl_per_sequence(params, ref_params, config, samples,
                                         chunk_size=chunk_size)))


def response_lengths(samples: Samples) -> np.ndarray:
    """Tokens generated per sample, the stop token included (int ``[N]``)."""
    return np.asarray([len(g.completions[0]) for g in samples.groups], np.int64)


def win_rate_from_scores(a: Sequence[float], b: Sequence[float]) -> float:
    """``P(a > b) + 0.5 P(a == b)`` over aligned scores (e.g. a reward model's or a judge's
    scores of the policy's and a baseline's responses to the same prompts)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"win rate needs aligned 1-d scores, got shapes {a.shape}, {b.shape}")
    if a.size == 0:
        raise ValueError("win rate of no responses")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def win_rate(task: Any, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> float:
    """P(reward(a) > reward(b)) + 0.5 P(tie), under the task's oracle."""
    ra = np.array([task.reward(p, c) for p, c in zip(prompts, a)])
    rb = np.array([task.reward(p, c) for p, c in zip(prompts, b)])
    return win_rate_from_scores(ra, rb)


def implicit_rewards(
    params: Any,
    ref_params: Any,
    config: ModelConfig,
    pairs: Sequence[packing.Group],
    *,
    beta: float = 1.0,
    chunk_size: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)`` implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))``
    (Rafailov et al. 2023, arXiv 2305.18290, Eq. 5 without the prompt-only ``beta log Z(x)``,
    which cancels in margins), float64 ``[P]`` each, of pairs given as groups of two
    completions (chosen first). Pass the objective's ``beta``; 1 gives the plain log-ratio."""
    if any(len(g.completions) != 2 for g in pairs):
        raise ValueError("implicit rewards of pairs need two completions (chosen, rejected) "
                         "per group")
    lp, _ = sequence_logps(params, config, pairs, chunk_size=chunk_size)
    lr, _ = sequence_logps(ref_params, config, pairs, chunk_size=chunk_size)
    r = beta * (lp.astype(np.float64) - lr.astype(np.float64))
    return r[0::2], r[1::2]


def preference_metrics(
    params: Any,
    ref_params: Any,
    config: ModelConfig,
    pairs: Sequence[packing.Group],
    *,
    beta: float = 1.0,
    chunk_size: int = CHUNK,
) -> dict[str, float]:
    """Held-out preference metrics, named as the DPO objective logs them in training:
    ``rewards/accuracy`` (chosen reward strictly higher), ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margin`` (means over pairs) and ``pairs``."""
    chosen, rejected = implicit_rewards(params, ref_params, config, pairs, beta=beta,
                                        chunk_size=chunk_size)
    if chosen.size == 0:
        raise ValueError("preference metrics of no pairs")
    return {
        "rewards/accuracy": float(np.mean(chosen > rejected)),
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margin": float(np.mean(chosen - rejected)),
        "pairs": float(chosen.size),
    }


def preference_accuracy(
    params: Any, ref_params: Any, config: ModelConfig, pairs: Sequence[packing.Group], *,
    chunk_size: int = CHUNK,
) -> float:
    """Fraction of held-out pairs (chosen, rejected) whose implicit reward
    ``log pi(y|x) - log pi_ref(y|x)`` is strictly higher for the chosen completion."""
    chosen, rejected = implicit_rewards(params, ref_params, config, pairs,
                                        chunk_size=chunk_size)
    return float(np.mean(chosen > rejected))


def evaluate_on_task(
    task: Any,
    params: Any,
    config: ModelConfig,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    rng: jax.Array,
    sampling_config: sampling.SamplingConfig,
    ref_params: Any = None,
    baseline: Samples | None = None,
    prompt_transform=None,
    chunk_size: int = CHUNK,
) -> tuple[dict[str, float], Samples]:
    """Oracle reward of the policy's samples, plus win rate vs ``baseline`` and KL to
    ``ref_params`` when given. ``prompt_transform`` rewrites the prompt the policy sees (e.g.
    prefixing a control token for conditional training); the oracle always grades the original.
    """
    shown = [prompt_transform(p) for p in prompts] if prompt_transform else list(prompts)
    samples = sample(params, config, tokenizer, shown, sampling_config=sampling_config, rng=rng)
    rewards = np.array([task.reward(p, c) for p, c in zip(prompts, samples.texts)])
    out = {"reward": float(rewards.mean()), "accuracy": float(np.mean(rewards >= 1.0))}
    if baseline is not None:
        out["win_rate"] = win_rate(task, prompts, samples.texts, baseline.texts)
    if ref_params is not None:
        out["kl"] = kl_to_reference(params, ref_params, config, samples, chunk_size=chunk_size)
    return out, samples
