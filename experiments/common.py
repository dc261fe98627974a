"""Shared pieces of the per-paper experiment modules (``experiments/<method>_<author><year>.py``).

Every paper module is a plain config module with three variants, each an
:class:`~fbjax.run.config.ExperimentConfig`:

* ``paper``: the paper's setup, one training stage (:func:`paper`): the checkpoint it starts
  from (``init_from``; its architecture and tokenizer are read from the checkpoint, never
  downloaded), data as typed sources from ``fbjax.data.sources``, objective and
  hyperparameters, optimizer, schedule, batch, steps, mesh, and what the paper evaluates
  (:class:`PaperEval`).
* ``sim`` (the default): the same objective on the feedback simulator with a tiny model,
  minutes on a CPU (:func:`sim`): SFT on the simulator's noisy demonstrator, a pool of the SFT
  policy's own samples, the method's stage on feedback built from that pool
  (``fbjax.run.sim_feedback``), and an evaluation against the SFT start.
* ``smoke``: the ``sim`` variant shrunk to seconds (:func:`smoke`); CI runs these.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from fbjax import sampling
from fbjax import sharding as fsh
from fbjax import sim as simlib
from fbjax.data import examples as ex
from fbjax.data import language, sources
from fbjax.data.listwise import paired_as_ranked
from fbjax.models import config as mc
from fbjax.run import sim
from fbjax.run.config import (
    EvalStage,
    ExperimentConfig,
    ModelSettings,
    SampleStage,
    StageEval,
    TrainStage,
)
from fbjax.data.chat import ChatTemplate
from fbjax.train import presets
from fbjax.train.config import TrainConfig
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig

VARIANTS = ("paper", "sim", "smoke")
DEFAULT_VARIANT = "sim"

# ============================================================================ paper variants


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaperEval:
    """What the paper evaluates and reports: the comparison target kept next to the config."""

    benchmark: str
    metric: str
    expected: str = ""


@dataclasses.dataclass(frozen=True)
class OnlineEncoder:
    """Stands in for a data stage that samples from the policy (self-generated responses,
    refinements, fresh feedback), which a paper variant does not have yet: the config
    validates, and loading its data says what is missing. Never a silent stand-in."""

    stage: str

    @property
    def unavailable(self) -> str:
        """Why this data cannot be built (``sources.Dataset.check_available`` raises it)."""
        return (f"this run needs an online stage ({self.stage}), which fbjax's paper variants "
                "do not have yet: it trains on fixed data only")

    def __call__(self, data, tokenizer, *, prompt_text):
        del data, tokenizer, prompt_text
        raise sources.UnavailableError(self.unavailable)


def judge(template: Any, stands_in_for: str, *, max_new_tokens: int = 256,
          temperature: float = 0.0) -> Any:
    """A local judge checkpoint standing in for a paper's feedback source in an online stage,
    given with ``--set stages.NAME.provider[.ROLE].checkpoint=DIR`` (a run without it fails
    before sampling, naming that path; ``fbjax.run.online.JudgeCheckpoint``)."""
    from fbjax.run.online import JudgeCheckpoint

    return JudgeCheckpoint(template=template, stands_in_for=stands_in_for,
                           sampling=sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                                            temperature=temperature))


def online_paper(name: str, *, checkpoint: str, stages: Sequence[Any], mesh: fsh.MeshConfig,
                 evaluation: PaperEval) -> ExperimentConfig:
    """A paper's run whose data the policy samples (``fbjax.run.config.OnlineStage``, possibly
    after offline stages), from the Hugging Face checkpoint ``checkpoint``."""
    return ExperimentConfig(name=name, init_from=hf(checkpoint), model_settings=BIG,
                            stages=tuple(stages), mesh=mesh, evaluation=evaluation)


def hf(name: str) -> str:
    """``init_from`` for a Hugging Face checkpoint, read from ``$FBJAX_HF_DIR`` or the hub cache
    (:func:`fbjax.models.checkpoints.resolve_checkpoint`; nothing is downloaded)."""
    return f"hf:{name}"


# Training settings of the paper runs: bfloat16 matmuls, float32 parameters, per-block
# rematerialisation. The architecture is the checkpoint's.
BIG = ModelSettings(dtype="bfloat16", remat="block")

# Mesh presets: FSDP alone up to a few billion parameters; 7B+ adds 4- or 8-way tensor
# parallelism inside a host so the per-device activations of long sequences fit.
MESH_FSDP = fsh.MeshConfig(shape=(1, -1, 1), rules=fsh.RULES_FSDP)
MESH_FSDP_TP4 = fsh.MeshConfig(shape=(1, -1, 4), rules=fsh.RULES_FSDP_TP)
MESH_FSDP_TP8 = fsh.MeshConfig(shape=(1, -1, 8), rules=fsh.RULES_FSDP_TP)

# Chat templates the papers' base models were tuned with (not in fbjax.data.chat's table).
ZEPHYR = ChatTemplate(name="zephyr", user_prefix="<|user|>\n", user_suffix="</s>\n",
                      assistant_prefix="<|assistant|>\n", system_prefix="<|system|>\n",
                      system_suffix="</s>\n")
MISTRAL_INST = ChatTemplate(name="mistral_inst", user_prefix="[INST] ", user_suffix=" [/INST]",
                            assistant_prefix="")
CHATML = ChatTemplate(name="chatml", user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n",
                      assistant_prefix="<|im_start|>assistant\n",
                      system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>\n")


def paper_train(
    *,
    examples: int,
    batch: int,
    completions: int,
    seq_len: int,
    max_prompt_len: int,
    epochs: float = 1.0,
    microbatches: int = 1,
) -> TrainConfig:
    """The loop of a paper's run in the padded layout the reference code uses: one
    (prompt, completion) sequence per row, so ``batch`` examples of ``completions`` sequences
    each are ``batch * completions`` rows, and ``epochs`` passes over ``examples`` are
    ``ceil(epochs * examples / batch)`` steps."""
    return TrainConfig(
        steps=math.ceil(epochs * examples / batch),
        batch=batch * completions,
        seq_len=seq_len,
        microbatches=microbatches,
        log_every=10,
        packing=False,
        share_prefix=False,
        max_prompt_len=max_prompt_len,
        max_completion_len=seq_len - max_prompt_len,
    )


def paper(name: str, *, checkpoint: str, objective: Objective, data: Any,
          optimizer: OptimizerConfig, train: TrainConfig, mesh: fsh.MeshConfig,
          evaluation: PaperEval, adapt=None, reward_model: bool = False) -> ExperimentConfig:
    """A paper's run: one training stage from the Hugging Face checkpoint ``checkpoint``."""
    return ExperimentConfig(
        name=name,
        init_from=hf(checkpoint),
        model_settings=dataclasses.replace(BIG, reward_head=True if reward_model else None),
        stages=(TrainStage(name="train", objective=objective, data=data, optimizer=optimizer,
                           train=train, adapt=adapt),),
        mesh=mesh,
        evaluation=evaluation,
    )


def coh_groups(data: Sequence[ex.Example], tokenizer, *, prompt_text, seed: int = 0):
    """Chain of Hindsight sequences from pairs or rankings (``language.chain_of_hindsight_groups``,
    with its 0-5% past-token masking), shuffled phrases drawn from a seeded generator. Every
    output ends with a trained EOS, so the model learns to stop after the output it is prompted
    for (see ``templates.chain_of_hindsight``)."""
    rendered = [dataclasses.replace(e, prompt=ex.user_prompt(prompt_text(e.prompt)))
                for e in paired_as_ranked(data)]
    return language.chain_of_hindsight_groups(rendered, tokenizer, np.random.default_rng(seed),
                                              eos_after_each=True)


# ============================================================================ sim variants

SIM_TASK = simlib.ArithmeticTask(max_operand=19)
SAMPLES_PER_PROMPT = 4
SIM_MODEL = mc.llama(vocab_size=384, hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=256, max_seq_len=128)
SIM_MESH = fsh.MeshConfig(shape=(1, -1, 1), rules=fsh.RULES_FSDP)
SIM_SAMPLING = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0)
# SFT on the noisy demonstrator (right half of the time), which leaves the policy mediocre.
SFT = TrainStage(
    name="sft", objective=presets.sft(), data=sim.Demonstrations(num_examples=6000, quality=0.5),
    train=TrainConfig(steps=600, batch=16, seq_len=96, slots_per_row=16, log_every=25),
    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=30),
    family="supervised", feedback="demonstrations",
)
# Preference-style objectives: the default experiment's stage (40 steps of 16 packed rows).
SIM_TRAIN = TrainConfig(steps=40, batch=16, seq_len=96, slots_per_row=16, log_every=10)
SIM_OPTIMIZER = OptimizerConfig(learning_rate=1e-4, warmup_steps=5, schedule="constant")
# Likelihood-based methods (language feedback) learn a new, conditional sequence format, so they
# take an SFT-like learning rate and more steps: at 120 steps the feedback-conditioned ones (ALT,
# FCP, LeTI) still sampled worse than the SFT start under the new prompt, at 360 better. Their
# sequences carry critiques, which run to ~200 tokens for a badly wrong answer: rows as long as
# the model's context, and prompts cut from the start so the question itself always stays.
SIM_LM_TRAIN = dataclasses.replace(SIM_TRAIN, steps=360, seq_len=SIM_MODEL.max_seq_len,
                                   max_prompt_len=SIM_MODEL.max_seq_len - 16)
SIM_LM_OPTIMIZER = dataclasses.replace(SIM_OPTIMIZER, learning_rate=1e-3)


def method(name: str, *, objective: Objective, build: Callable[..., list],
           train: TrainConfig = SIM_TRAIN, optimizer: OptimizerConfig = SIM_OPTIMIZER,
           family: str = "", feedback: str = "", eval_prompt: Callable[[str], str] | None = None,
           evaluate: Callable[..., dict] | None = None, adapt=None, head=None,
           pool: str = "pool") -> TrainStage:
    """A method's simulator stage: ``objective`` from the SFT start (also its reference) on the
    feedback ``build`` makes from the SFT policy's samples. The stage's name seeds its data."""
    evaluation = None
    if eval_prompt is not None or evaluate is not None:
        evaluation = StageEval(prompt=eval_prompt, evaluate=evaluate)
    return TrainStage(name=name, objective=objective, data=sim.Feedback(build=build, pool=pool),
                      train=train, optimizer=optimizer, start="sft", adapt=adapt, head=head,
                      evaluation=evaluation, family=family, feedback=feedback)


def sim_experiment(name: str, *methods: TrainStage, samples_per_prompt: int = SAMPLES_PER_PROMPT,
                   num_feedback_prompts: int = 4096, num_eval_prompts: int = 512,
                   seed: int = 0) -> ExperimentConfig:
    """SFT, a pool of ``samples_per_prompt`` samples of the SFT policy per prompt (4, so that
    pairwise, listwise and group methods all read the same pool), ``methods`` from the SFT start,
    and their evaluation against it."""
    return ExperimentConfig(
        name=name,
        model=SIM_MODEL,
        tokenizer=sim.Tokenizer(vocab_size=384),
        task=SIM_TASK,
        seed=seed,
        mesh=SIM_MESH,
        stages=(
            SFT,
            SampleStage(name="pool", policy="sft", num_prompts=num_feedback_prompts,
                        samples_per_prompt=samples_per_prompt, sampling=SIM_SAMPLING),
            *methods,
            EvalStage(name="eval", baseline="sft", num_prompts=num_eval_prompts,
                      sampling=SIM_SAMPLING),
        ),
        main=None if len(methods) != 1 else "",
    )


def smoke(config: ExperimentConfig, *, method_steps: int = 2) -> ExperimentConfig:
    """A simulator config shrunk to seconds for CI: one-layer width-32 model on a data-parallel
    mesh (the fastest to compile on CPU devices), a short SFT that still leaves the policy
    producing some correct answers (so every feedback type has data), 32 feedback prompts,
    16 evaluation prompts and ``method_steps`` steps of each method."""

    def shrink(stage):
        if isinstance(stage, SampleStage):
            return dataclasses.replace(stage, num_prompts=32)
        if isinstance(stage, EvalStage):
            return dataclasses.replace(stage, num_prompts=16)
        if stage.name == "sft":
            return dataclasses.replace(
                stage, data=dataclasses.replace(stage.data, num_examples=2000),
                train=dataclasses.replace(stage.train, steps=400, batch=8, log_every=100),
                optimizer=dataclasses.replace(stage.optimizer, learning_rate=1e-2))
        return dataclasses.replace(stage, train=dataclasses.replace(
            stage.train, steps=method_steps, batch=8, log_every=1))

    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, hidden_size=32, mlp_dim=64, num_layers=1),
        mesh=fsh.MeshConfig(shape=(-1, 1, 1), rules=fsh.RULES_FSDP),
        stages=tuple(shrink(s) for s in config.stages),
    )


def merge(configs: Sequence[ExperimentConfig]) -> list[ExperimentConfig]:
    """Simulator configs that differ only in their method stages (and name), merged into one
    config each, so their methods share a single SFT start and sample pool."""

    def key(cfg):
        shared = tuple(s for s in cfg.stages if not (isinstance(s, TrainStage) and s.start))
        return dataclasses.replace(cfg, name="", stages=shared, main=None)

    merged: list[ExperimentConfig] = []
    for cfg in configs:
        methods = tuple(s for s in cfg.stages if isinstance(s, TrainStage) and s.start)
        for i, other in enumerate(merged):
            if key(other) == key(cfg):
                *head, last = other.stages
                merged[i] = dataclasses.replace(other, stages=(*head, *methods, last))
                break
        else:
            merged.append(dataclasses.replace(cfg, name="sim_many", main=None))
    return merged


def variants(paper_config: Callable[[], ExperimentConfig], *methods: TrainStage,
             name: str) -> Callable[[str], ExperimentConfig]:
    """A module's ``get_config``: ``paper``, ``sim`` (``methods`` on the simulator) and
    ``smoke``, or a clear error naming the variants."""

    def get_config(variant: str = DEFAULT_VARIANT) -> ExperimentConfig:
        if variant == "paper":
            return paper_config()
        if variant in ("sim", "smoke"):
            config = sim_experiment(f"{name}_sim", *methods)
            return smoke(config) if variant == "smoke" else config
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")

    return get_config


def derive(base: ExperimentConfig, *, name: str, checkpoint: str | None = None,
           evaluation: PaperEval | None = None, **stage_changes) -> ExperimentConfig:
    """Another paper's run on ``base``'s setup: its one training stage with ``stage_changes``
    (objective, data, train, ...), optionally from another checkpoint."""
    (stage,) = base.stages
    return dataclasses.replace(
        base, name=name,
        init_from=hf(checkpoint) if checkpoint else base.init_from,
        evaluation=evaluation or base.evaluation,
        stages=(dataclasses.replace(stage, **stage_changes),),
    )
