"""The simulator's stage inputs: its tokenizer, demonstrations, pools of the policy's own samples,
feedback built from them, and how a trained stage is judged by the task's oracle.

A simulator experiment is an ordinary :class:`~fbjax.run.config.ExperimentConfig`: SFT on
:class:`Demonstrations`, a :class:`~fbjax.run.config.SampleStage` pool of the SFT policy's
samples, one training stage per method reading :class:`Feedback` built from that pool, and an
:class:`~fbjax.run.config.EvalStage`. The builders that turn a pool into each method's feedback
are in :mod:`fbjax.run.sim_feedback`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from fbjax import evaluation, sampling, sim
from fbjax.data import encode
from fbjax.data.packing import Group
from fbjax.models.config import ModelConfig
from fbjax.run.files import write_json


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tokenizer:
    """A BPE vocabulary trained on the task's own text (deterministic in the seed); the model's
    vocabulary is set to its size."""

    vocab_size: int = 384
    resize_model = True

    def build(self, task: Any, seed: int):
        return sim.build_tokenizer([task], vocab_size=self.vocab_size, seed=seed)


@dataclasses.dataclass(frozen=True)
class DataContext:
    """What a stage's data source may read: the run's tokenizer, task and seed, the pools of
    earlier sample stages, and the stage's own name (which seeds its random draws)."""

    tokenizer: Any
    task: Any
    seed: int
    stage: str
    pools: Mapping[str, "SamplePool"] = dataclasses.field(default_factory=dict)

    @property
    def rng(self) -> np.random.Generator:
        """Seeded by the run's seed and the stage's name, not its position, so a method gets the
        same data alone as next to others."""
        return np.random.default_rng([self.seed, 3, zlib.crc32(self.stage.encode())])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Demonstrations:
    """SFT data: the task's noisy demonstrator (right with probability ``quality``, otherwise
    making the task's systematic mistakes) on ``num_examples`` prompts."""

    num_examples: int = 6000
    quality: float = 0.5

    def load_in(self, ctx: DataContext) -> list[Group]:
        pairs = sim.sft_corpus(ctx.task, np.random.default_rng(ctx.seed), self.num_examples,
                               quality=self.quality)
        return encode.sft(pairs, ctx.tokenizer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrincipledDemonstrations:
    """Demonstrations under written principles: each of ``num_examples`` prompts is shown under
    principle ``k mod n`` (``render(prompt, principle)``), and the demonstrator is right with
    that principle's ``qualities[k mod n]``. With unequal qualities the model learns to read
    the principles and follows them weakly, as a pretrained model does before SAMI."""

    principles: tuple[str, ...]
    qualities: tuple[float, ...]
    render: Callable[[str, str], str]
    num_examples: int = 6000

    def load_in(self, ctx: DataContext) -> list[Group]:
        if len(self.principles) != len(self.qualities):
            raise ValueError(f"{len(self.principles)} principles but {len(self.qualities)} "
                             "qualities")
        rng = ctx.rng
        prompts = ctx.task.sample_prompts(rng, self.num_examples)
        n = len(self.principles)
        pairs = [(self.render(p, self.principles[k % n]),
                  ctx.task.demonstration(p, rng, self.qualities[k % n]))
                 for k, p in enumerate(prompts)]
        return encode.sft(pairs, ctx.tokenizer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Feedback:
    """A method's training data, built by ``build(task, pool, tokenizer, rng)`` from the pool of
    stage ``pool`` (the task's oracle gives the feedback)."""

    build: Callable[..., list[Group]]
    pool: str = "pool"

    def load_in(self, ctx: DataContext) -> list[Group]:
        if self.pool not in ctx.pools:
            raise ValueError(f"stage {ctx.stage!r} reads the pool of stage {self.pool!r}, which "
                             f"is not a sample stage before it")
        return self.build(ctx.task, ctx.pools[self.pool], ctx.tokenizer, ctx.rng)


# ----------------------------------------------------------------------------- sample pools


@dataclasses.dataclass(frozen=True)
class SamplePool:
    """K samples per prompt from one policy, with their oracle rewards (``[n, K]``)."""

    prompts: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    rewards: np.ndarray

    @property
    def flat_prompts(self) -> list[str]:
        return [p for p, ts in zip(self.prompts, self.texts) for _ in ts]

    @property
    def flat_texts(self) -> list[str]:
        return [t for ts in self.texts for t in ts]

    def save(self, path: str) -> None:
        """Written whole or not at all (a temporary file renamed into place)."""
        write_json(path, {"prompts": self.prompts, "texts": self.texts,
                          "rewards": np.asarray(self.rewards).tolist()})

    @classmethod
    def load(cls, path: str) -> "SamplePool":
        try:
            with open(path) as f:
                raw = json.load(f)
            return cls(tuple(raw["prompts"]), tuple(tuple(t) for t in raw["texts"]),
                       np.asarray(raw["rewards"], np.float64))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable sample pool ({e}); delete it to sample "
                             "again") from None


def sample_pool(task: Any, params: Any, model: ModelConfig, tokenizer, prompts: Sequence[str], *,
                samples_per_prompt: int, sampling_config: sampling.SamplingConfig,
                rng: jax.Array, renderings: Sequence[Callable[[str], str]] = ()) -> SamplePool:
    """Samples ``samples_per_prompt`` completions of every prompt and grades them; with
    ``renderings``, that many under each rendering of the prompt, in order (a prompt's texts are
    then ``len(renderings) * samples_per_prompt`` long), graded against the plain prompt."""
    shown = tuple(renderings) or (lambda p: p,)
    flat = [r(p) for p in prompts for r in shown for _ in range(samples_per_prompt)]
    out = evaluation.sample(params, model, tokenizer, flat, sampling_config=sampling_config,
                            rng=rng)
    k = samples_per_prompt * len(shown)
    texts = tuple(tuple(out.texts[i * k:(i + 1) * k]) for i in range(len(prompts)))
    rewards = np.array([[task.reward(p, t) for t in ts] for p, ts in zip(prompts, texts)])
    return SamplePool(tuple(prompts), texts, rewards)


# ----------------------------------------------------------------------------- judging stages


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalContext:
    """What a stage's own evaluation may use: the trained stage and the baseline it began from."""

    task: Any
    params: Any
    model: ModelConfig
    tokenizer: Any
    prompts: tuple[str, ...]
    sft_params: Any
    sft_model: ModelConfig
    sampling: sampling.SamplingConfig
    rng: jax.Array


def reward_model_start(model: ModelConfig, params, rng):
    """Stiennon et al. 2020 start the reward model from the SFT policy with a fresh scalar head
    (and, in fbjax, without the LM head a reward model does not use)."""
    from fbjax.models.decoder import has_lm_head, init_reward_head

    rm = dataclasses.replace(model, reward_head=True)
    rm_params = {k: v for k, v in params.items() if k != "lm_head" or has_lm_head(rm)}
    rm_params["reward_head"] = init_reward_head(rm, rng)
    return rm, rm_params


def best_of_n(ctx: EvalContext, *, n: int = 4) -> dict[str, float]:
    """A reward model judged by what it is for: on held-out prompts, ``n`` samples of the SFT
    policy each; the reward model picks one (best-of-n). Reports the picked samples' oracle
    reward and accuracy, its win rate over the first sample, the analytical best-of-n KL bound
    ``log n - (n - 1) / n``, and the reward model's agreement with the oracle on every pair of
    samples the oracle tells apart (``rm_accuracy``), next to the samples' mean and the oracle's
    own best-of-n (the ceiling)."""
    pool = sample_pool(ctx.task, ctx.sft_params, ctx.sft_model, ctx.tokenizer, list(ctx.prompts),
                       samples_per_prompt=n, sampling_config=ctx.sampling, rng=ctx.rng)
    groups = [Group(encode.prompt_ids(ctx.tokenizer, p),
                    tuple(encode.completion_ids(ctx.tokenizer, t) for t in texts))
              for p, texts in zip(pool.prompts, pool.texts)]
    scores = evaluation.sequence_rewards(ctx.params, ctx.model, groups).reshape(len(groups), n)
    oracle = np.asarray(pool.rewards, np.float64)
    picked = oracle[np.arange(len(groups)), scores.argmax(axis=1)]
    i, j = np.triu_indices(n, 1)
    told_apart = oracle[:, i] != oracle[:, j]
    agree = (scores[:, i] > scores[:, j]) == (oracle[:, i] > oracle[:, j])
    return {
        "reward": float(picked.mean()),
        "accuracy": float(np.mean(picked >= 1.0)),
        "win_rate": float(np.mean((picked > oracle[:, 0]) + 0.5 * (picked == oracle[:, 0]))),
        "kl": math.log(n) - (n - 1) / n,
        "rm_accuracy": float(agree[told_apart].mean()) if told_apart.any() else float("nan"),
        "reward_sample_mean": float(oracle.mean()),
        "reward_oracle_best_of_n": float(oracle.max(axis=1).mean()),
    }
