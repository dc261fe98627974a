"""The one experiment config type: an experiment is a model, a start, and a tuple of stages.

Every experiment module returns an :class:`ExperimentConfig` for every variant. A single
training run is one :class:`TrainStage`; the simulator's runs are several (SFT, a pool of the
SFT policy's samples, one stage per method, an evaluation), and later online rounds are more
stages of the same kinds. Every field of every stage is reachable with ``--set``
(:mod:`fbjax.run.overrides`), and every training stage checkpoints and resumes through the same
Orbax path (:mod:`fbjax.run.stages`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from fbjax import sampling
from fbjax.checkpoint import CheckpointConfig
from fbjax.models.config import ModelConfig
from fbjax.models.lora import LoraConfig
from fbjax.sharding import MeshConfig
from fbjax.train.config import TrainConfig
from fbjax.train.nonfinite import NonFinitePolicy
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How the model is trained, not which weights it has; applied on top of ``model`` or of the
    checkpoint's architecture (None keeps what is there)."""

    dtype: str | None = None
    param_dtype: str | None = None
    remat: str | None = None
    # A scalar reward head on the backbone: a reward model started from a language model.
    reward_head: bool | None = None

    def apply(self, model: ModelConfig) -> ModelConfig:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None}
        return dataclasses.replace(model, **changes) if changes else model


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageEval:
    """How a simulator run evaluates one training stage.

    ``prompt`` rewrites the prompt the policy is sampled under (e.g. a control token); the
    oracle always grades the original. ``evaluate`` replaces the default evaluation for a stage
    that trains something other than a policy (a reward model judged by best-of-n)."""

    prompt: Callable[[str], str] | None = None
    evaluate: Callable[..., dict[str, float]] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainStage:
    """One training run of ``objective`` on ``data``.

    ``start``: the stage whose final parameters this one starts from (None: the experiment's
    start, ``init_from`` or a random initialisation). ``reference``: the stage whose parameters
    are the frozen reference (None: this stage's start). ``head``: ``(model config, params,
    rng) -> (model config, params)`` turns the start into what this stage trains (a reward model
    from a policy). ``adapt``: ``(objective, token groups) -> objective`` sets hyperparameters
    that depend on the data, applied once it is built and recorded with the stage.
    ``reference_cache``: see :func:`fbjax.run.stages.caches_reference`.
    """

    name: str
    objective: Objective
    data: Any
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    start: str | None = None
    reference: str | None = None
    head: Callable[..., tuple[ModelConfig, Any]] | None = None
    adapt: Callable[[Objective, Sequence[Any]], Objective] | None = None
    # Reference log-prob sums computed once per (reference, data) and carried by the batches,
    # so the step runs no reference forward and holds no reference parameters; objectives that
    # read per-token reference log-probs (NFT) always run the reference in the step.
    reference_cache: bool = True
    evaluation: StageEval | None = None
    # What the stage is, for tables: its feedback family and the feedback it reads.
    family: str = ""
    feedback: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleStage:
    """``samples_per_prompt`` samples of ``num_prompts`` task prompts from stage ``policy``,
    graded by the task's oracle: the pool that later stages' feedback is built from."""

    name: str = "pool"
    policy: str = "sft"
    num_prompts: int = 4096
    samples_per_prompt: int = 2
    sampling: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=8,
                                                                temperature=1.0)
    # Sample each prompt under each of these renderings (``samples_per_prompt`` each, in this
    # order, graded against the plain prompt): SAMI's responses under each constitution.
    # Empty: the plain prompt.
    renderings: tuple[Callable[[str], str], ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalStage:
    """Every training stage after ``baseline`` sampled on ``num_prompts`` held-out task prompts:
    oracle reward, win rate against ``baseline`` and KL to it; a table, ``results.json`` and a
    reward-vs-KL plot in the workdir."""

    name: str = "eval"
    baseline: str = "sft"
    num_prompts: int = 512
    sampling: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=8,
                                                                temperature=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlineStage:
    """``rounds`` rounds of: sample ``samples_per_prompt`` responses to each of ``prompts``'s
    prompts from the current policy, ask ``provider`` (``fbjax.feedback``) for feedback on them,
    turn its records into token groups with ``encode(records, tokenizer)``, and train
    ``objective`` on them for ``train.steps`` steps. Round 1 starts from stage ``start`` (None:
    the experiment's start), round r from round r - 1's result.

    ``prompts``: a prompt source (``fbjax.run.online``: the task's prompts, HumanEval problems,
    a dataset's prompts). ``data``: the dataset (``fbjax.data.sources.Dataset``) a dataset prompt
    source reads, so ``--set data.manual_dir=...`` reaches it as it reaches a training stage's.
    ``provider``: the local provider that answers (a stand-in where the paper asked people or an
    API); ``paper_provider`` names what the paper asked. A provider that must be given a
    checkpoint (``fbjax.run.online.JudgeCheckpoint``) and was not fails before round 1 with one
    line naming the ``--set`` path.
    ``prompt_template`` rewrites a prompt into what the policy is sampled under (LeTI's reward
    token); the provider judges the original. ``reference``: the stage whose parameters are the
    frozen reference (None: this stage's start; ``per_round_reference``: each round's start).
    Every round keeps its samples, the provider's answers and its checkpoints under
    ``<workdir>/<name>/round_<r>/``, so a run killed mid-round resumes without sampling or asking
    again what it already has.
    """

    name: str
    prompts: Any
    provider: Any
    encode: Callable[..., list]
    objective: Objective
    rounds: int = 1
    samples_per_prompt: int = 2
    sampling: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=64,
                                                                temperature=1.0)
    prompt_template: Callable[[str], str] | None = None
    # Round 1 samples under the plain prompt (ALT: the start has never seen a feedback
    # condition, so its first samples are unconditioned; later rounds use prompt_template).
    plain_first_round: bool = False
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    start: str | None = None
    reference: str | None = None
    per_round_reference: bool = False
    reference_cache: bool = True
    data: Any = None
    paper_provider: str = ""
    family: str = ""
    feedback: str = ""

    def __post_init__(self):
        if isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"stages.{self.name}.rounds must be >= 1, got {self.rounds!r}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"stages.{self.name}.samples_per_prompt must be >= 1")


Stage = TrainStage | SampleStage | EvalStage | OnlineStage


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything that defines a run.

    ``model``: the architecture, or None to take it from the ``init_from`` checkpoint (a paper
    variant then runs on whatever checkpoint ``--set init_from=...`` names). When both are
    given, the checkpoint must match ``model`` (a mismatch names the fields). ``tokenizer``: a
    tokenizer source with ``build(task, seed)`` (the simulator's), or None for the data's or the
    checkpoint's. ``task``: the simulated task whose oracle grades samples (simulator runs).
    ``main``: the stage that ``--set`` paths without ``stages.NAME.`` address (default: the last
    training stage; None: every stage path must name its stage).
    """

    name: str
    stages: tuple[Stage, ...]
    model: ModelConfig | None = None
    model_settings: ModelSettings = ModelSettings()
    init_from: str | None = None
    tokenizer: Any = None
    task: Any = None
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=50, keep=2)
    # LoRA adapters on the frozen start of every training stage (fbjax.models.lora;
    # ``--set lora.rank=8`` switches it on); None trains every weight.
    lora: LoraConfig | None = None
    # What a non-finite step does: halt (max_rollbacks=0), or roll back and lower the rate.
    nonfinite: NonFinitePolicy = NonFinitePolicy()
    # A resumed stage refuses a config that differs from its checkpoint's unless this is set.
    allow_config_change: bool = False
    main: str | None = ""
    # What the paper evaluates (a record kept next to the config; see experiments/common.py).
    evaluation: Any = None

    def __post_init__(self):
        if not self.stages:
            raise ValueError(f"experiment {self.name!r} has no stages")
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment {self.name!r}: stage names must be unique, {dupes} "
                             "repeat (they name workdirs and --set paths)")
        if self.model is None and self.init_from is None:
            raise ValueError(f"experiment {self.name!r}: set model, init_from, or both")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        earlier: set[str] = set()
        for s in self.stages:
            for ref in _stage_refs(s):
                if ref not in earlier:
                    raise ValueError(f"stage {s.name!r} refers to stage {ref!r}, which does not "
                                     f"come before it (stages: {names})")
            earlier.add(s.name)
        if self.main and self.main not in names:
            raise ValueError(f"main={self.main!r} is not a stage; stages: {names}")

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    @property
    def train_stages(self) -> tuple[TrainStage | OnlineStage, ...]:
        """The stages that train a policy (offline and online)."""
        return tuple(s for s in self.stages if isinstance(s, (TrainStage, OnlineStage)))

    @property
    def main_stage(self) -> Stage | None:
        """The stage that unprefixed ``--set`` paths address."""
        if self.main is None:
            return None
        if self.main:
            return self.stage(self.main)
        trains = self.train_stages
        return trains[-1] if trains else None


def _stage_refs(stage: Stage) -> tuple[str, ...]:
    if isinstance(stage, (TrainStage, OnlineStage)):
        return tuple(r for r in (stage.start, stage.reference) if r)
    if isinstance(stage, SampleStage):
        return (stage.policy,)
    return (stage.baseline,)


def single(*, name: str, objective: Objective, data: Any, model: ModelConfig | None = None,
           optimizer: OptimizerConfig = OptimizerConfig(), train: TrainConfig = TrainConfig(),
           adapt=None, stage: str = "train", **experiment) -> ExperimentConfig:
    """A one-stage experiment: ``objective`` on ``data`` (the paper variants' shape)."""
    return ExperimentConfig(
        name=name, model=model,
        stages=(TrainStage(name=stage, objective=objective, data=data, optimizer=optimizer,
                           train=train, adapt=adapt),),
        **experiment,
    )
